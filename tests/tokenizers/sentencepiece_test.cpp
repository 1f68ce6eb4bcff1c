// T5's SentencePiece Unigram tokenizer: the Viterbi segmentation, byte fallback, the T5 pipeline (sentinels,
// </s>, Metaspace), tokenizer.json components, the precompiled charsmap, and errors for bad files. Exactness
// against transformers on a trained model is test_t5_parity.py's job.
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "tokenizers/precompiled_charsmap.h"
#include "tokenizers/sentencepiece_tokenizer.h"
#include "tokenizers/tokenizer.h"
#include "tokenizers/unigram.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Ids = std::vector<int64_t>;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("kestrel_t5tok_" + std::string(info->name()) + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
  }

 private:
  fs::path path_;
};

// The error message of `fn`, which must throw kestrel::Error.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a kestrel::Error";
  return "";
}

Ids encode_pieces(const UnigramModel& m, std::string_view text) {
  Ids out;
  m.encode(text, out);
  return out;
}

TEST(Unigram, ViterbiPicksTheBestScoringSegmentationAndFusesUnknowns) {
  // The example of `tokenizers`' Unigram docs: "abcdacdxx" -> abcd, a, cd, xx (one fused <unk>).
  UnigramModel m(
      {{"<unk>", 0}, {"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"cd", 1}, {"ab", 2}, {"abc", 5}, {"abcd", 10}},
      0, false, "test");
  EXPECT_EQ(encode_pieces(m, "abcdacdxx"), (Ids{8, 1, 5, 0}));
  EXPECT_EQ(encode_pieces(m, "xaxx"), (Ids{0, 1, 0}));
  EXPECT_EQ(encode_pieces(m, ""), Ids{});
}

TEST(Unigram, ScoresDecideBetweenOverlappingPieces) {
  // "ab"+"c" scores -1 + -1 = -2; "a"+"bc" scores -3 + -0.5 = -3.5.
  UnigramModel m({{"<unk>", 0}, {"a", -3}, {"b", -3}, {"c", -1}, {"ab", -1}, {"bc", -0.5}}, 0, false, "test");
  EXPECT_EQ(encode_pieces(m, "abc"), (Ids{4, 3}));
}

TEST(Unigram, ByteFallbackSpellsUnknownCharactersAsBytes) {
  std::vector<UnigramModel::Piece> pieces = {{"<unk>", 0}, {"a", -1}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    pieces.push_back({buf, -5});
  }
  UnigramModel m(pieces, 0, true, "test");
  // "é" is C3 A9: <0xC3> is id 2 + 0xC3.
  EXPECT_EQ(encode_pieces(m, "a\xC3\xA9"), (Ids{1, 2 + 0xC3, 2 + 0xA9}));
  EXPECT_EQ(m.byte_value(2 + 0x41), 0x41);
  EXPECT_EQ(m.byte_value(1), -1);
}

TEST(Unigram, DuplicatePieceResolvesToTheLastId) {
  UnigramModel m({{"<unk>", 0}, {"x", -1}, {"x", -2}}, 0, false, "test");
  EXPECT_EQ(encode_pieces(m, "x"), Ids{2});
  EXPECT_EQ(m.find("x"), 2);
}

TEST(Unigram, RejectsBadUnkIdAndEmptyVocab) {
  EXPECT_NE(error_of([] {
              UnigramModel({{"a", 0}}, 3, false, "vocab.json");
            }).find("unk_id 3"),
            std::string::npos);
  EXPECT_NE(error_of([] { UnigramModel({}, 0, false, "vocab.json"); }).find("empty"), std::string::npos);
}

// A T5-style tokenizer.json: <pad> </s> <unk>, word pieces, then the sentinels <extra_id_1>, <extra_id_0>.
json t5_tokenizer_json() {
  json vocab = json::array({{"<pad>", 0.0},
                            {"</s>", 0.0},
                            {"<unk>", 0.0},
                            {"\u2581", -2.0},
                            {"\u2581a", -1.0},
                            {"\u2581b", -1.0},
                            {"a", -3.0},
                            {"b", -3.0},
                            {"\u2581ab", -1.5},
                            {"c", -4.0}});
  vocab.push_back({"<extra_id_1>", 0.0});
  vocab.push_back({"<extra_id_0>", 0.0});
  return {{"version", "1.0"},
          {"model", {{"type", "Unigram"}, {"unk_id", 2}, {"vocab", vocab}, {"byte_fallback", false}}},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}},
                                           {{"type", "Metaspace"},
                                            {"replacement", "\u2581"},
                                            {"prepend_scheme", "always"},
                                            {"split", true}}})}}},
          {"decoder",
           {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}}},
          {"post_processor", nullptr},
          {"added_tokens", json::array()}};
}

std::unique_ptr<Tokenizer> t5_tokenizer(const TempDir& dir, json config = {{"extra_ids", 2}}) {
  dir.write("tokenizer.json", t5_tokenizer_json().dump());
  dir.write("tokenizer_config.json", config.dump());
  return load_tokenizer(dir.path(), "t5");
}

TEST(T5Tokenizer, SentinelsAreWholeTokensAndEosIsAppended) {
  TempDir dir;
  const auto tok = t5_tokenizer(dir);
  EXPECT_EQ(tok->kind(), "sentencepiece-unigram");
  EXPECT_EQ(tok->vocab_size(), 12);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->pad_id(), 0);
  // Whitespace around a sentinel does not matter: each side is its own span with its own ▁.
  EXPECT_EQ(tok->encode("a <extra_id_0> b"), (Ids{4, 11, 5, 1}));
  EXPECT_EQ(tok->encode("a<extra_id_0>b"), (Ids{4, 11, 5, 1}));
  EXPECT_EQ(tok->encode("ab  b", false), (Ids{8, 5}));
  EXPECT_EQ(tok->encode("</s><pad>a", false), (Ids{1, 0, 4}));
  EXPECT_EQ(tok->encode("", true), Ids{1});
  EXPECT_EQ(tok->encode(" \t\n", true), Ids{1});
  // "x" is unknown; "▁" alone is a piece, so "x" becomes ▁ + <unk>.
  EXPECT_EQ(tok->encode("x", false), (Ids{3, 2}));
}

TEST(T5Tokenizer, DecodeDropsTheFirstMetaspaceAndSkipsSpecials) {
  TempDir dir;
  const auto tok = t5_tokenizer(dir);
  EXPECT_EQ(tok->decode({4, 11, 5, 1}), "a<extra_id_0> b</s>");
  EXPECT_EQ(tok->decode({4, 11, 5, 1}, true), "a b");
  EXPECT_EQ(tok->decode({0, 4, 5}, true), "a b");  // after skipping <pad>, ▁a is the first token
  EXPECT_EQ(tok->decode({}), "");
  // Ids the tokenizer lacks decode to nothing, as in transformers (T5 pads vocab_size past the tokenizer's).
  EXPECT_EQ(tok->decode({4, 12, -1, 5}), tok->decode({4, 5}));
}

TEST(T5Tokenizer, CleanUpTokenizationSpacesFollowsTheConfig) {
  TempDir dir;
  auto doc = t5_tokenizer_json();
  doc["model"]["vocab"].push_back({"\u2581.", -1.0});  // id 12
  dir.write("tokenizer.json", doc.dump());
  dir.write("tokenizer_config.json", json{{"extra_ids", 2}, {"clean_up_tokenization_spaces", true}}.dump());
  EXPECT_EQ(load_tokenizer(dir.path(), "t5")->decode({4, 12}), "a.");
  dir.write("tokenizer_config.json", json{{"extra_ids", 2}}.dump());
  EXPECT_EQ(load_tokenizer(dir.path(), "t5")->decode({4, 12}), "a .");
}

TEST(T5Tokenizer, ReadsInvalidUtf8AsReplacementCharacters) {
  TempDir dir;
  const auto tok = t5_tokenizer(dir);
  EXPECT_EQ(tok->encode("a\xFF"), tok->encode("a\xEF\xBF\xBD"));
  EXPECT_EQ(tok->encode("a\xFF", false), (Ids{4, 2}));  // ▁a, then U+FFFD is <unk>
}

// tokenizer.json taken as written when tokenizer_class is not T5's.
TEST(UnigramTokenizerJson, MetaspacePrependFirstOnlyAtTheStartOfTheText) {
  TempDir dir;
  auto doc = t5_tokenizer_json();
  doc["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", true}};
  doc["added_tokens"] = json::array({{{"id", 11},
                                      {"content", "<extra_id_0>"},
                                      {"special", true},
                                      {"normalized", false},
                                      {"lstrip", false},
                                      {"rstrip", false},
                                      {"single_word", false}}});
  doc["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"</s>", {{"id", "</s>"}, {"ids", {1}}, {"tokens", {"</s>"}}}}}}};
  dir.write("tokenizer.json", doc.dump());
  dir.write("tokenizer_config.json",
            json{{"tokenizer_class", "PreTrainedTokenizerFast"}, {"eos_token", "</s>"}}.dump());
  const auto tok = load_tokenizer(dir.path(), "t5");
  // "a" at the start gets ▁; "b" right after the sentinel does not; the space before "a" stays a ▁ piece.
  EXPECT_EQ(tok->encode("a<extra_id_0>b", false), (Ids{4, 11, 7}));
  EXPECT_EQ(tok->encode("a b"), (Ids{4, 5, 1}));
  EXPECT_EQ(tok->encode("a  b", false), (Ids{4, 3, 5}));
  EXPECT_EQ(tok->eos_id(), 1);
}

TEST(UnigramTokenizerJson, ReplaceAndStripNormalizers) {
  TempDir dir;
  auto doc = t5_tokenizer_json();
  doc["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       json::array({{{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                    {{"type", "Replace"}, {"pattern", {{"String", "c"}}}, {"content", "b"}}})}};
  doc["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}};
  dir.write("tokenizer.json", doc.dump());
  dir.write("tokenizer_config.json", json{{"tokenizer_class", "PreTrainedTokenizerFast"}}.dump());
  EXPECT_EQ(load_tokenizer(dir.path(), "t5")->encode("  a c  ", false), (Ids{4, 5}));
}

TEST(UnigramTokenizerJson, UnsupportedComponentsAreClearErrors) {
  TempDir dir;
  dir.write("tokenizer_config.json", json{{"tokenizer_class", "PreTrainedTokenizerFast"}}.dump());
  const auto with = [&](const char* key, json value) {
    auto doc = t5_tokenizer_json();
    doc[key] = value;
    dir.write("tokenizer.json", doc.dump());
    return error_of([&] { load_tokenizer(dir.path(), "t5"); });
  };
  const std::string file = (dir.path() / "tokenizer.json").string();
  std::string e = with("normalizer", {{"type", "NFKC"}});
  EXPECT_NE(e.find(file), std::string::npos) << e;
  EXPECT_NE(e.find("normalizer 'NFKC' is not supported"), std::string::npos) << e;
  e = with("normalizer", {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}});
  EXPECT_NE(e.find("regex"), std::string::npos) << e;
  e = with("pre_tokenizer", {{"type", "ByteLevel"}});
  EXPECT_NE(e.find("pre_tokenizer 'ByteLevel'"), std::string::npos) << e;
  e = with("decoder", {{"type", "ByteFallback"}});
  EXPECT_NE(e.find("decoder 'ByteFallback'"), std::string::npos) << e;
  e = with("model", {{"type", "BPE"}, {"vocab", json::object()}, {"merges", json::array()}});
  EXPECT_NE(e.find("model type 'BPE'"), std::string::npos) << e;
}

TEST(T5TokenizerFiles, ErrorsNameTheFile) {
  TempDir dir;
  dir.write("spiece.model", "this is not a protobuf");
  std::string e = error_of([&] { load_tokenizer(dir.path(), "t5"); });
  EXPECT_NE(e.find((dir.path() / "spiece.model").string()), std::string::npos) << e;
  EXPECT_NE(e.find("not a valid SentencePiece model"), std::string::npos) << e;

  TempDir dir2;
  auto doc = t5_tokenizer_json();
  doc["model"]["vocab"][0] = "not a pair";
  dir2.write("tokenizer.json", doc.dump());
  e = error_of([&] { load_tokenizer(dir2.path(), "t5"); });
  EXPECT_NE(e.find("model.vocab[0]"), std::string::npos) << e;

  TempDir dir3;
  dir3.write("tokenizer.json", t5_tokenizer_json().dump());
  dir3.write("tokenizer_config.json",
             json{{"extra_ids", 5}}.dump());  // <extra_id_2> and up are not in the vocab
  e = error_of([&] { load_tokenizer(dir3.path(), "t5"); });
  EXPECT_NE(e.find("'<extra_id_2>' is not in the vocabulary"), std::string::npos) << e;

  TempDir empty;
  e = error_of([&] { load_tokenizer(empty.path(), "t5"); });
  EXPECT_NE(e.find("no tokenizer.json or spiece.model"), std::string::npos) << e;
}

TEST(PrecompiledCharsmap, RejectsMalformedBlobs) {
  EXPECT_NE(error_of([] { PrecompiledCharsmap("ab", "x.json"); }).find("too short"), std::string::npos);
  EXPECT_NE(error_of([] {
              PrecompiledCharsmap(std::string("\xFF\x00\x00\x00", 4) + "abc", "x.json");
            }).find("bad trie size"),
            std::string::npos);
}

// Trains a small SentencePiece Unigram model (nmt_nfkc normalisation, T5's special ids) into
// dir/spiece.model.
void train_spiece(const fs::path& dir) {
  std::ofstream text(dir / "train.txt");
  const char* lines[] = {"the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
                         "finance office fifty fine files",
                         "one two three four five six seven eight nine ten"};
  for (int i = 0; i < 40; ++i)
    for (const char* l : lines) text << l << " " << i << "\n";
  text.close();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "train.txt").string() + " --model_prefix=" + (dir / "spiece").string() +
      " --model_type=unigram --vocab_size=120 --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 "
      "--hard_vocab_limit=false"
      " --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  fs::remove(dir / "spiece.vocab");
  fs::remove(dir / "train.txt");
}

TEST(T5TokenizerFiles, SpieceModelAppliesTheCharsmapAndAppendsSentinels) {
  TempDir dir;
  train_spiece(dir.path());
  const auto tok = load_tokenizer(dir.path(), "t5");
  const int64_t n = tok->vocab_size();
  // <extra_id_0> is the last id, <extra_id_99> comes right after the SentencePiece pieces.
  EXPECT_EQ(tok->encode("<extra_id_0><extra_id_99>", false), (Ids{n - 1, n - 100}));
  // NFKC through the charsmap: the ligature, the circled digit and the full-width letter.
  EXPECT_EQ(tok->encode("\xEF\xAC\x81ve \xE2\x91\xA0 \xEF\xBC\xA1"), tok->encode("five 1 A"));
  EXPECT_EQ(tok->decode(tok->encode("the quick brown fox"), true), "the quick brown fox");
  EXPECT_EQ(tok->eos_id(), 1);
}

}  // namespace
}  // namespace kestrel
