#include "generate/text_stream.h"

#include <gtest/gtest.h>

#include <map>

namespace kestrel {
namespace {

// A byte-level "tokenizer": each id is one byte; invalid UTF-8 at the end decodes to U+FFFD like HF's
// errors="replace".
std::string decode_bytes(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s.push_back(char(id));
  // Replace an incomplete trailing sequence by U+FFFD, as a real decoder would.
  const size_t stable = stable_utf8_prefix(s);
  if (stable < s.size()) s = s.substr(0, stable) + "\xEF\xBF\xBD";
  return s;
}

TEST(TextStream, NeverSplitsAUtf8Character) {
  TextStream ts(decode_bytes);
  const std::string euro = "\xE2\x82\xAC";  // 3 bytes
  EXPECT_EQ(ts.push({'a'}), "a");
  EXPECT_EQ(ts.push({0xE2}), "");
  EXPECT_EQ(ts.push({0x82}), "");
  EXPECT_EQ(ts.push({0xAC}), euro);
  EXPECT_EQ(ts.push({'b', 'c'}), "bc");
  EXPECT_EQ(ts.finish(), "");
}

TEST(TextStream, FinishReleasesAHeldBackTail) {
  TextStream ts(decode_bytes);
  EXPECT_EQ(ts.push({'x', 0xF0, 0x9F}), "x");
  EXPECT_EQ(ts.finish(), "\xEF\xBF\xBD");
}

TEST(TextStream, ConcatenationEqualsTheFullDecode) {
  // Tokens whose text depends on context (a leading-space rule like SentencePiece's).
  std::map<int64_t, std::string> pieces = {{1, " Hello"}, {2, " world"}, {3, "!"}};
  auto decode = [&](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t id : ids) s += pieces[id];
    return s.empty() ? s : s.substr(1);  // drop the first leading space
  };
  TextStream ts(decode);
  std::string all;
  for (int64_t id : {1, 2, 3, 2}) all += ts.push({id});
  all += ts.finish();
  EXPECT_EQ(all, decode({1, 2, 3, 2}));
}

TEST(StableUtf8Prefix, Cases) {
  EXPECT_EQ(stable_utf8_prefix("abc"), 3u);
  EXPECT_EQ(stable_utf8_prefix("ab\xC3"), 2u);
  EXPECT_EQ(stable_utf8_prefix("ab\xC3\xA9"), 4u);
  EXPECT_EQ(stable_utf8_prefix("a\xEF\xBF\xBD"), 1u);
  EXPECT_EQ(stable_utf8_prefix("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(stable_utf8_prefix(""), 0u);
}

}  // namespace
}  // namespace kestrel
