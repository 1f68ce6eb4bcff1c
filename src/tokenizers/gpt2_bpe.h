#pragma once
// GPT-2's byte-level BPE tokenizer, token-for-token equal to transformers' (fast) GPT2Tokenizer.
//
// Encode: cut out added tokens ("<|endoftext|>") -> GPT-2 regex pre-tokenizer -> BPE on the bytes of each
// word. Decode: concatenate the bytes of the tokens, then UTF-8 with U+FFFD for ill-formed sequences. Invalid
// UTF-8 input is not an error: it is first made valid the way Python's bytes.decode(errors="replace") does
// (each maximal ill-formed subpart becomes U+FFFD), which is what a caller of transformers would hand it.
#include <filesystem>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizers/added_vocabulary.h"
#include "tokenizers/bpe_model.h"
#include "tokenizers/gpt2_pretokenizer.h"
#include "tokenizers/tokenizer.h"

namespace kestrel {

// Everything that defines a byte-level BPE tokenizer, as read from its files.
struct Gpt2BpeSpec {
  std::unordered_map<std::string, int64_t> vocab;  // byte-level spelling -> id
  std::vector<BpeMergeRule> merges;                // in rank order
  BpeModelOptions model;
  std::vector<AddedVocabulary::Token> added_tokens;
  bool add_prefix_space = false;                // ByteLevel pre-tokenizer: a space before each text piece
  bool use_regex = true;                        // ByteLevel pre-tokenizer: split with GPT-2's regex
  std::vector<int64_t> prefix_ids, suffix_ids;  // post-processor template, added when add_special_tokens
  std::optional<std::string> eos_token, pad_token;
  bool clean_up_tokenization_spaces = false;  // as transformers 5 applies it to BPE (see tokenizer_config)
};

class Gpt2BpeTokenizer final : public Tokenizer {
 public:
  explicit Gpt2BpeTokenizer(const Gpt2BpeSpec& spec);

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override { return int64_t(id_bytes_.size()); }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  std::optional<int64_t> pad_id() const override { return pad_id_; }
  std::string kind() const override { return "gpt2-bpe"; }

 private:
  void encode_text(std::string_view text, std::vector<int64_t>& ids) const;

  BpeModel model_;
  AddedVocabulary added_;
  Gpt2PreTokenizer pretokenizer_;
  bool add_prefix_space_, use_regex_, clean_up_spaces_;
  std::vector<int64_t> prefix_ids_, suffix_ids_;
  std::vector<std::optional<std::string>> id_bytes_;  // what each id decodes to; nothing for unassigned ids
  std::vector<bool> id_special_;
  std::optional<int64_t> eos_id_, pad_id_;
};

// Reads a folder's vocab.json + merges.txt (+ tokenizer_config.json / special_tokens_map.json when present).
std::unique_ptr<Tokenizer> load_gpt2_bpe_from_vocab_merges(const std::filesystem::path& dir);
// Reads a BPE tokenizer.json already parsed from `file` (+ the folder's tokenizer_config.json when present).
std::unique_ptr<Tokenizer> load_gpt2_bpe_from_tokenizer_json(const nlohmann::json& tokenizer_json,
                                                             const std::filesystem::path& file);

}  // namespace kestrel
