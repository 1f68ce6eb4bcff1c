#pragma once
// Added tokens (e.g. "<|endoftext|>") and how they are cut out of the input before pre-tokenization,
// following the `tokenizers` library's AddedVocabulary: leftmost-longest matches, tokens that are not
// "normalized" first, then the normalized ones in what is left, with the lstrip / rstrip / single_word
// options.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kestrel {

class AddedVocabulary {
 public:
  // One added token with the options `tokenizers` gives it.
  struct Token {
    std::string content;
    int64_t id = -1;
    bool special = false;      // dropped by decode(skip_special_tokens=true)
    bool lstrip = false;       // the match swallows whitespace on its left
    bool rstrip = false;       // ... and on its right
    bool single_word = false;  // matches only when not inside a word
    bool normalized = true;    // matched after normalization (Kestrel's BPE has no normalizer: order only)
  };

  AddedVocabulary() = default;
  explicit AddedVocabulary(std::vector<Token> tokens);

  // A piece of the input: either an added token (`id` >= 0) or plain text to pre-tokenize (`id` == -1).
  struct Piece {
    std::string_view text;
    int64_t id;
  };
  // Cuts `text` (valid UTF-8) into pieces covering it in order; empty plain pieces are left out.
  std::vector<Piece> split(std::string_view text) const;

 private:
  void split_pass(std::string_view text, bool normalized, std::vector<Piece>& out) const;

  std::vector<Token> tokens_;
  std::vector<std::vector<size_t>> by_first_byte_[2];  // [normalized][byte] -> token indices, longest first
};

}  // namespace kestrel
