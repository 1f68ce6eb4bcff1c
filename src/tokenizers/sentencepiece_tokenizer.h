#pragma once
// T5's SentencePiece Unigram tokenizer, matching what `transformers.AutoTokenizer` (5.x) gives for a T5
// folder.
//
// The pipeline, as Hugging Face `tokenizers` runs it:
//   added tokens (</s>, <pad>, <unk>, <extra_id_N>) are cut out of the raw text first;
//   each remaining span is normalised (the precompiled charsmap, optionally Replace/Strip steps),
//   pre-tokenised (WhitespaceSplit, then Metaspace: ' ' -> '▁', a '▁' prepended, split before each '▁'),
//   segmented by the Unigram model; then </s> is appended (TemplateProcessing).
// Decoding maps ids to pieces (skipping specials on request), turns '▁' into spaces (dropping those of the
// first token), and optionally applies transformers' clean_up_tokenization.
//
// Files: spiece.model (read with libsentencepiece) or tokenizer.json (model.type "Unigram"), plus
// tokenizer_config.json for the special tokens and flags.
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "tokenizers/added_vocabulary.h"
#include "tokenizers/tokenizer.h"
#include "tokenizers/unigram.h"

namespace kestrel {

// Everything the tokenizer files decide, resolved; built by the loaders, checked by the constructor.
struct SentencePieceSpec {
  std::string source;  // the file(s) it came from, for messages
  std::vector<UnigramModel::Piece> pieces;
  int64_t unk_id = 0;
  bool byte_fallback = false;
  // Normalisation steps, applied in order to each span between added tokens.
  std::vector<std::function<std::string(std::string_view)>> normalizers;
  // Pre-tokenisation.
  bool whitespace_split = false;
  enum class Prepend { Always, First, Never };
  struct Metaspace {
    std::string replacement = "\xE2\x96\x81";
    Prepend prepend = Prepend::Always;
    bool split = true;
  };
  std::optional<Metaspace> metaspace;
  // Decoding: the Metaspace decoder if set, else pieces joined with spaces (`tokenizers` with no decoder).
  std::optional<Metaspace> decoder;
  bool clean_up_tokenization_spaces = false;
  std::vector<AddedVocabulary::Token> added_tokens;
  std::vector<int64_t> prefix_ids, suffix_ids;  // what add_special_tokens puts around the text
  std::optional<int64_t> eos_id, pad_id;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(SentencePieceSpec spec);

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int64_t> eos_id() const override { return spec_.eos_id; }
  std::optional<int64_t> pad_id() const override { return spec_.pad_id; }
  std::string kind() const override { return "sentencepiece-unigram"; }

  // The string of one id (a piece or an added token); throws for an id outside the vocabulary.
  const std::string* id_to_piece(int64_t id) const;  // null for ids the tokenizer lacks

 private:
  void encode_span(std::string_view span, bool at_text_start, std::vector<int64_t>& out) const;

  SentencePieceSpec spec_;
  UnigramModel model_;
  AddedVocabulary added_;
  std::vector<const std::string*> added_by_id_;  // id -> added token content, for ids that are added tokens
  std::unordered_set<std::string> special_contents_;
  int64_t vocab_size_;
};

// Loads the tokenizer of a T5 model folder: tokenizer.json if it holds a Unigram model (as transformers 5.x
// prefers it), else spiece.model; tokenizer_config.json for special tokens. Throws kestrel::Error naming the
// file.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& dir);

// The spec alone (tests and `kestrel inspect` use it).
SentencePieceSpec load_sentencepiece_spec(const std::filesystem::path& dir);

}  // namespace kestrel
