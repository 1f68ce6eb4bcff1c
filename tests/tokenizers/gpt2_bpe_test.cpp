// GPT-2 byte-level BPE: the byte alphabet, UTF-8 repair, the merge loop, added tokens and file errors, on
// small tokenizers written by each test. Exactness against transformers is test_gpt2_parity.py's job.
#include "tokenizers/gpt2_bpe.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "core/error.h"
#include "tokenizers/byte_level.h"
#include "tokenizers/tokenizer.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("kestrel_gpt2tok_" + std::string(info->name()) + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path_ / name) << text; }

 private:
  fs::path path_;
};

// A vocabulary of the 256 byte tokens (ids 0..255 in byte order), then the merged tokens of `merges` in
// order, then "<|endoftext|>".
json byte_vocab(const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::bytes_to_token(std::string(1, char(b)))] = b;
  int next = 256;
  for (const auto& [l, r] : merges)
    if (!vocab.contains(l + r)) vocab[l + r] = next++;
  vocab["<|endoftext|>"] = next;
  return vocab;
}

const std::vector<std::pair<std::string, std::string>> kMerges = {
    {"h", "e"},  {"l", "l"}, {"he", "ll"},  {"hell", "o"}, {"Ġ", "w"},
    {"Ġw", "o"}, {"r", "l"}, {"Ġwo", "rl"}, {"Ġworl", "d"}};

void write_vocab_merges(const TempDir& dir, const std::vector<std::pair<std::string, std::string>>& merges) {
  dir.write("vocab.json", byte_vocab(merges).dump());
  std::string text = "#version: 0.2\n";
  for (const auto& [l, r] : merges) text += l + " " + r + "\n";
  dir.write("merges.txt", text);
}

std::unique_ptr<Tokenizer> small_tokenizer(const TempDir& dir) {
  write_vocab_merges(dir, kMerges);
  return load_tokenizer(dir.path(), "gpt2");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ByteLevel, AlphabetIsABijectionThatKeepsPrintableBytes) {
  std::set<char32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = byte_level::byte_to_codepoint(uint8_t(b));
    EXPECT_TRUE(seen.insert(cp).second) << b;
    EXPECT_EQ(byte_level::codepoint_to_byte(cp), uint8_t(b));
    if (b >= '!' && b <= '~') {
      EXPECT_EQ(cp, char32_t(b));
    }
  }
  EXPECT_EQ(byte_level::byte_to_codepoint(' '), U'\u0120');   // "Ġ"
  EXPECT_EQ(byte_level::byte_to_codepoint('\n'), U'\u010A');  // "Ċ"
  EXPECT_FALSE(byte_level::codepoint_to_byte(U'\u4E2D'));
  EXPECT_EQ(byte_level::token_to_bytes("\xC4\xA0the"), " the");
  EXPECT_FALSE(byte_level::token_to_bytes("\xE4\xB8\xAD"));  // 中 is not in the alphabet
}

TEST(Utf8, RepairReplacesMaximalSubpartsLikePython) {
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8::to_valid_utf8("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(utf8::to_valid_utf8("\xFF"), fffd);
  EXPECT_EQ(utf8::to_valid_utf8("a\xE2\x82"), "a" + fffd);             // truncated: one U+FFFD
  EXPECT_EQ(utf8::to_valid_utf8("\xED\xA0\x80"), fffd + fffd + fffd);  // a surrogate: three
  EXPECT_EQ(utf8::to_valid_utf8("\xC0\xAF"), fffd + fffd);             // overlong: two
  EXPECT_EQ(utf8::to_valid_utf8("\xF0\x9F\x98z"), fffd + "z");
  EXPECT_EQ(utf8::to_valid_utf8("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // above U+10FFFF
  EXPECT_TRUE(utf8::is_valid("\xF0\x9F\x98\x80"));
  EXPECT_FALSE(utf8::is_valid("\xF0\x9F\x98"));
}

TEST(Gpt2Bpe, MergesByRank) {
  TempDir dir;
  auto tok = small_tokenizer(dir);
  const auto vocab = byte_vocab(kMerges);
  EXPECT_EQ(tok->kind(), "gpt2-bpe");
  EXPECT_EQ(tok->encode("hello world"), (std::vector<int64_t>{vocab["hello"], vocab["Ġworld"]}));
  // "hel" has no "hel" token: he + l.
  EXPECT_EQ(tok->encode("hel"), (std::vector<int64_t>{vocab["he"], vocab["l"]}));
  EXPECT_EQ(tok->decode(tok->encode("hello world")), "hello world");
  EXPECT_EQ(tok->vocab_size(), int64_t(vocab.size()));
  EXPECT_EQ(tok->eos_id(), vocab["<|endoftext|>"].get<int64_t>());
  EXPECT_FALSE(tok->pad_id());
}

TEST(Gpt2Bpe, LaterRankLosesEvenWhenLeftmost) {
  TempDir dir;
  // "b c" outranks "a b", so "abc" must become a + bc although "ab" is further left.
  write_vocab_merges(dir, {{"b", "c"}, {"a", "b"}});
  auto tok = load_tokenizer(dir.path(), "gpt2");
  const auto vocab = byte_vocab({{"b", "c"}, {"a", "b"}});
  EXPECT_EQ(tok->encode("abc"), (std::vector<int64_t>{vocab["a"], vocab["bc"]}));
  EXPECT_EQ(tok->encode("abab"), (std::vector<int64_t>{vocab["ab"], vocab["ab"]}));
}

TEST(Gpt2Bpe, SpecialTokenIsMatchedBeforePreTokenization) {
  TempDir dir;
  auto tok = small_tokenizer(dir);
  const int64_t eot = *tok->eos_id();
  const auto ids = tok->encode("hello<|endoftext|>hello");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[1], eot);
  EXPECT_EQ(tok->decode(ids), "hello<|endoftext|>hello");
  EXPECT_EQ(tok->decode(ids, /*skip_special_tokens=*/true), "hellohello");
}

TEST(Gpt2Bpe, InvalidUtf8IsEncodedAsItsPythonReplacement) {
  TempDir dir;
  auto tok = small_tokenizer(dir);
  EXPECT_EQ(tok->encode("a\xFF"
                        "b\xE2\x82"),
            tok->encode("a\xEF\xBF\xBD"
                        "b\xEF\xBF\xBD"));
  // Ids that spell half a character decode to U+FFFD rather than to broken UTF-8.
  EXPECT_EQ(tok->decode({0xE2, 0x82}), "\xEF\xBF\xBD");
}

TEST(Gpt2Bpe, RoundTripsRandomBytes) {
  TempDir dir;
  auto tok = small_tokenizer(dir);
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000; ++i) {
    std::string s(rng() % 40, '\0');
    for (auto& c : s) c = char(rng() % 4 ? "hello wrd\t\n'sA1"[rng() % 16] : rng() % 256);
    EXPECT_EQ(tok->decode(tok->encode(s)), utf8::to_valid_utf8(s)) << json(utf8::to_valid_utf8(s)).dump();
  }
}

TEST(Gpt2Bpe, VeryLongWordIsFastAndExact) {
  TempDir dir;
  auto tok = small_tokenizer(dir);
  const std::string word(200000, 'l');
  const auto start = std::chrono::steady_clock::now();
  const auto ids = tok->encode(word);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(ids.size(), 100000u);  // "ll" pairs from the left
  EXPECT_EQ(tok->decode(ids), word);
}

TEST(Gpt2Bpe, DecodeSkipsIdsOutsideTheVocabularyAsTransformersDoes) {
  TempDir dir;
  auto tok = small_tokenizer(dir);
  EXPECT_EQ(tok->decode({1, tok->vocab_size(), -1}), tok->decode({1}));
}

TEST(Gpt2BpeFiles, TokenizerJsonWithPairMergesAndStrippingAddedToken) {
  TempDir dir;
  json merges = json::array();
  for (const auto& [l, r] : kMerges) merges.push_back({l, r});
  auto vocab = byte_vocab(kMerges);
  const int64_t mask = int64_t(vocab.size());
  vocab["<mask>"] = mask;
  json tj = {{"added_tokens",
              {{{"id", vocab["<|endoftext|>"]}, {"content", "<|endoftext|>"}, {"special", true}},
               {{"id", mask}, {"content", "<mask>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}}}},
             {"normalizer", nullptr},
             {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
             {"decoder", {{"type", "ByteLevel"}}},
             {"post_processor", {{"type", "ByteLevel"}}},
             {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  dir.write("tokenizer.json", tj.dump());
  auto tok = load_tokenizer(dir.path(), "gpt2");
  // The spaces around <mask> belong to it, so "world" loses its "Ġ".
  EXPECT_EQ(tok->encode("hello  <mask> world"),
            (std::vector<int64_t>{vocab["hello"], mask, vocab["w"], vocab["o"], vocab["rl"], vocab["d"]}));
}

TEST(Gpt2BpeFiles, ErrorsNameTheFileAndPlace) {
  TempDir dir;
  write_vocab_merges(dir, kMerges);
  dir.write("vocab.json", "{\"a\": 0,\n \"b\": }");
  auto msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("vocab.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;

  write_vocab_merges(dir, kMerges);
  dir.write("merges.txt", "#version: 0.2\nh e\nh q!\n");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("merges.txt line 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'q!'"), std::string::npos) << msg;

  dir.write("merges.txt", "#version: 0.2\nh e\nl l extra\n");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("merges.txt line 3: expected two tokens"), std::string::npos) << msg;

  dir.write("merges.txt", "h e\n");
  dir.write("vocab.json", "{\"h\": 0, \"e\": 1}");  // "he" missing
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("merges.txt line 1: merge names token 'he'"), std::string::npos) << msg;

  dir.write("vocab.json", "{\"h\": -4}");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("vocab.json: token 'h' has id -4"), std::string::npos) << msg;

  dir.write("vocab.json", "{\"h\": 0}");
  fs::remove(dir.path() / "merges.txt");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("merges.txt: cannot open"), std::string::npos) << msg;

  dir.write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("tokenizer.json: model.type is 'WordPiece'"), std::string::npos) << msg;

  dir.write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]},
                                  "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}})");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("tokenizer.json: model.merges[0]"), std::string::npos) << msg;

  dir.write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                  "pre_tokenizer": {"type": "Whitespace"}, "decoder": {"type": "ByteLevel"}})");
  msg = error_of([&] { load_tokenizer(dir.path(), "gpt2"); });
  EXPECT_NE(msg.find("pre_tokenizer type 'Whitespace' is not supported"), std::string::npos) << msg;

  TempDir empty;
  msg = error_of([&] { load_tokenizer(empty.path(), "gpt2"); });
  EXPECT_NE(msg.find("no tokenizer files"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kestrel
