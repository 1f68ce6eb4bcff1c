// load_tokenizer: picks the tokenizer family from the model type and the files in the folder.
#include "tokenizers/tokenizer.h"

#include "core/error.h"
#include "tokenizers/gpt2_bpe.h"
#include "tokenizers/sentencepiece_tokenizer.h"
#include "tokenizers/tokenizer_files.h"

namespace kestrel {

namespace fs = std::filesystem;

namespace {

std::string tokenizer_json_type(const nlohmann::json& j) {
  if (j.is_object() && j.contains("model") && j["model"].is_object() && j["model"].contains("type") &&
      j["model"]["type"].is_string())
    return j["model"]["type"].get<std::string>();
  return "";
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir, const std::string& model_type) {
  if (!fs::is_directory(dir)) fail(dir.string() + ": not a folder (looking for tokenizer files)");
  // T5 folders carry a Unigram tokenizer.json and/or spiece.model; the SentencePiece loader chooses between
  // them.
  if (model_type == "t5") return load_sentencepiece_tokenizer(dir);

  const fs::path tokenizer_json = dir / "tokenizer.json";
  if (fs::exists(tokenizer_json)) {
    // transformers prefers tokenizer.json when a folder has it, so Kestrel does too.
    const auto j = read_json_file(tokenizer_json);
    const std::string type = tokenizer_json_type(j);
    if (type == "BPE") return load_gpt2_bpe_from_tokenizer_json(j, tokenizer_json);
    if (type == "Unigram") return load_sentencepiece_tokenizer(dir);
    fail(tokenizer_json.string() + ": model.type is '" + type +
         "'; Kestrel reads BPE (GPT-2) and Unigram (T5)");
  }
  if (fs::exists(dir / "vocab.json") || fs::exists(dir / "merges.txt"))
    return load_gpt2_bpe_from_vocab_merges(dir);
  if (fs::exists(dir / "spiece.model")) return load_sentencepiece_tokenizer(dir);
  fail(dir.string() +
       ": no tokenizer files (looked for tokenizer.json, vocab.json + merges.txt, spiece.model)" +
       (model_type.empty() ? std::string() : " for model type '" + model_type + "'"));
}

}  // namespace kestrel
