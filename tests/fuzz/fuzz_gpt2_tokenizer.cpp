// libFuzzer target: GPT-2's byte-level BPE tokenizer, encode and decode of arbitrary input.
//
// At start-up a small tokenizer is written to a temporary folder: the 256 byte tokens, a few dozen merges of
// common English pairs, "<|endoftext|>" (special) and a single_word added token "<w>" (not special), so no
// fixture needs committing. The first input byte picks the operation; the rest is text (encode) or
// little-endian u16 ids (decode).
// Invariants: any bytes encode, to ids inside the vocabulary, and decode back to the input as Python's
// errors="replace" reads it (byte-level BPE loses nothing); any ids decode to valid UTF-8. Any exception or
// abort is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizers/byte_level.h"
#include "tokenizers/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::unique_ptr<kestrel::Tokenizer> g_tokenizer;

// Merges in rank order, in byte-level spelling ("Ġ" is a space). Chained so that multi-step merges happen.
const char* const kMerges[] = {
    "Ġ t",  "h e",  "Ġ a",  "i n",  "Ġt he", "e r", "o n",  "Ġ s",    "r e",   "Ġ w",   "a t",
    "e n",  "Ġ o",  "i s",  "o r",  "Ġ b",   "e s", "a n",  "Ġ c",    "Ġ f",   "i t",   "in g",
    "Ġ p",  "l l",  "Ġ m",  "Ġw h", "e d",   "o u", "Ġ d",  "Ġo f",   "Ġa nd", "n d",   "Ġ h",
    "Ġt o", "Ġ i",  "Ġ in", "Ġ l",  "a r",   "' s", "Ġ 1",  "0 0",    "Ġ Ġ",   "ĠĠ ĠĠ", "Ċ Ċ",
    "Ġ Ċ",  "Ġa n", "Ġ is", "Ġt h", "e l",   "l o", "h el", "hel lo", "Ġw or", "or l",  "orl d"};

void write(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const fs::path dir = fs::temp_directory_path() / ("kestrel_fuzz_gpt2_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[kestrel::byte_level::bytes_to_token(std::string(1, char(b)))] = b;
  std::string merges = "#version: 0.2\n";
  for (const char* rule : kMerges) {
    const std::string s = rule;
    const size_t space = s.find(' ');
    const std::string merged = s.substr(0, space) + s.substr(space + 1);
    if (!vocab.contains(merged)) vocab[merged] = vocab.size();
    merges += s + "\n";
  }
  const size_t eot = vocab.size();
  vocab["<|endoftext|>"] = eot;
  write(dir / "vocab.json", vocab.dump());
  write(dir / "merges.txt", merges);
  const nlohmann::json config = {
      {"added_tokens_decoder",
       {{std::to_string(eot), {{"content", "<|endoftext|>"}, {"special", true}}},
        {std::to_string(eot + 1), {{"content", "<w>"}, {"special", false}, {"single_word", true}}}}}};
  write(dir / "tokenizer_config.json", config.dump());
  g_tokenizer = kestrel::load_tokenizer(dir, "gpt2");
  fs::remove_all(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const kestrel::Tokenizer& tok = *g_tokenizer;
  const uint8_t op = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (op % 2 == 0) {
    const std::vector<int64_t> ids = tok.encode(rest);
    for (int64_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) std::abort();
    if (tok.decode(ids) != kestrel::utf8::to_valid_utf8(rest)) std::abort();
  } else {
    std::vector<int64_t> ids;
    for (size_t i = 0; i + 1 < rest.size(); i += 2)
      ids.push_back((uint8_t(rest[i]) | (uint8_t(rest[i + 1]) << 8)) % tok.vocab_size());
    if (!kestrel::utf8::is_valid(tok.decode(ids, op & 2))) std::abort();
  }
  return 0;
}
