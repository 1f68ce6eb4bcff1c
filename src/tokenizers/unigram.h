#pragma once
// The Unigram language-model segmenter of SentencePiece, as Hugging Face `tokenizers` runs it: a Viterbi
// search over every vocabulary piece that matches at each position, maximising the sum of piece scores (log
// probs). A character no piece covers becomes <unk> with score min_score - 10; consecutive <unk>s are fused
// into one; with byte_fallback an unknown span is spelled as <0xNN> byte pieces instead, when all of them
// exist.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kestrel {

class UnigramModel {
 public:
  struct Piece {
    std::string text;
    double score = 0;
  };
  // `source` names the file in error messages. Throws kestrel::Error on an empty vocab or a bad unk_id.
  UnigramModel(std::vector<Piece> pieces, int64_t unk_id, bool byte_fallback, const std::string& source);

  // Appends the ids of one pre-token (valid UTF-8) to `out`.
  void encode(std::string_view text, std::vector<int64_t>& out) const;

  int64_t size() const { return int64_t(pieces_.size()); }
  const std::string& piece(int64_t id) const { return pieces_[size_t(id)].text; }
  // The id of a piece, or -1. With duplicate pieces the last one wins, as in `tokenizers`.
  int64_t find(std::string_view text) const;
  int64_t unk_id() const { return unk_id_; }
  // If `id` is a <0xNN> byte piece of a byte-fallback model, its byte value; else -1.
  int byte_value(int64_t id) const;

 private:
  struct TrieNode {
    std::vector<std::pair<unsigned char, uint32_t>> children;  // sorted by byte
    int64_t piece = -1;                                        // id of the piece ending here
  };
  void insert_into_trie(const std::string& text);
  uint32_t child(uint32_t node, unsigned char c) const;  // 0 = none (the root is never a child)

  std::vector<Piece> pieces_;
  std::unordered_map<std::string, int64_t> ids_;
  std::vector<TrieNode> trie_;
  double min_score_ = 0;
  int64_t unk_id_;
  bool byte_fallback_;
};

}  // namespace kestrel
