#pragma once
// One interface for both tokenizers; ids are int64 as in transformers.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kestrel {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // add_special_tokens follows transformers: GPT-2 adds none; T5 appends </s>.
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  // skip_special_tokens drops eos/pad/unk-style specials (not <extra_id_N> unless they are special in the
  // tokenizer files, as in transformers).
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  virtual std::optional<int64_t> pad_id() const = 0;
  virtual std::string kind() const = 0;  // "gpt2-bpe", "sentencepiece-unigram"
};

// Loads the tokenizer of a model folder: tokenizer.json if present, else vocab.json+merges.txt (GPT-2) or
// spiece.model (T5). `model_type` picks the family when the files alone do not say.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir, const std::string& model_type);

}  // namespace kestrel
