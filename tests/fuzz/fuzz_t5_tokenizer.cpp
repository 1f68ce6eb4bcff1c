// libFuzzer target: T5's SentencePiece tokenizer, encode and decode of arbitrary input.
//
// At start-up a small Unigram model (T5's special ids, nmt_nfkc charsmap) is trained with libsentencepiece
// from tests/fuzz/corpus/t5_tokenizer_train.txt into a temporary folder, so no binary model is committed. The
// first input byte picks the operation; the rest is text (encode) or little-endian u16 ids (decode).
// Invariants: any bytes encode (ill-formed UTF-8 is read as U+FFFD), to ids inside the vocabulary, ending in
// </s> when asked; ids in the vocabulary always decode, to valid UTF-8. Any exception or abort is a bug.
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizers/sentencepiece_text.h"
#include "tokenizers/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::unique_ptr<kestrel::Tokenizer> g_tokenizer;

fs::path training_text() {
  if (const char* src = std::getenv("KESTREL_SOURCE_DIR"))
    return fs::path(src) / "tests/fuzz/corpus/t5_tokenizer_train.txt";
  return fs::path(__FILE__).parent_path() / "corpus" / "t5_tokenizer_train.txt";
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const fs::path dir = fs::temp_directory_path() / ("kestrel_fuzz_t5_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + training_text().string() + " --model_prefix=" + (dir / "spiece").string() +
      " --model_type=unigram --vocab_size=300 --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1"
      " --hard_vocab_limit=false --character_coverage=0.995 --minloglevel=2");
  if (!status.ok()) {
    std::fprintf(stderr, "fuzz_t5_tokenizer: training failed: %s\n", status.ToString().c_str());
    std::abort();
  }
  g_tokenizer = kestrel::load_tokenizer(dir, "t5");
  fs::remove_all(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const kestrel::Tokenizer& tok = *g_tokenizer;
  const uint8_t op = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (op % 2 == 0) {
    const bool add_special = op & 2;
    const std::vector<int64_t> ids = tok.encode(rest, add_special);
    for (int64_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) std::abort();
    if (add_special && (ids.empty() || ids.back() != *tok.eos_id())) std::abort();
    const std::string text = tok.decode(ids, op & 4);
    if (!kestrel::utf8::is_valid(text)) std::abort();
  } else {
    std::vector<int64_t> ids;
    for (size_t i = 0; i + 1 < rest.size(); i += 2)
      ids.push_back((uint8_t(rest[i]) | (uint8_t(rest[i + 1]) << 8)) % tok.vocab_size());
    const std::string text = tok.decode(ids, op & 2);
    if (!kestrel::utf8::is_valid(text)) std::abort();
  }
  return 0;
}
