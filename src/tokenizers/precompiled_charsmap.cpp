#include "tokenizers/precompiled_charsmap.h"

#include <unicode/brkiter.h>
#include <unicode/utext.h>

#include <cstring>
#include <memory>

#include "core/error.h"
#include "tokenizers/sentencepiece_text.h"

namespace kestrel {

namespace {

// Fields of one double-array unit (darts-clone layout, as SentencePiece writes it).
bool unit_has_leaf(uint32_t u) {
  return (u >> 8) & 1;
}
uint32_t unit_value(uint32_t u) {
  return u & ((1u << 31) - 1);
}
uint32_t unit_label(uint32_t u) {
  return u & ((1u << 31) | 0xFF);
}
uint32_t unit_offset(uint32_t u) {
  return (u >> 10) << ((u & (1u << 9)) >> 6);
}

// Calls fn(begin, end) for each extended grapheme cluster of valid UTF-8 `text` (ICU, UAX #29).
template <typename Fn>
void for_each_grapheme(std::string_view text, const std::string& source, Fn&& fn) {
  UErrorCode status = U_ZERO_ERROR;
  UText* ut = utext_openUTF8(nullptr, text.data(), int64_t(text.size()), &status);
  std::unique_ptr<UText, decltype(&utext_close)> ut_guard(ut, &utext_close);
  std::unique_ptr<icu::BreakIterator> it(
      icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), status));
  if (U_SUCCESS(status)) it->setText(ut, status);
  if (U_FAILURE(status))
    internal_error(source + ": ICU grapheme segmentation failed: " + u_errorName(status));
  // With a UTF-8 UText, ICU's indices are byte offsets into `text`.
  int32_t begin = it->first();
  for (int32_t end = it->next(); end != icu::BreakIterator::DONE; begin = end, end = it->next())
    fn(size_t(begin), size_t(end));
}

}  // namespace

PrecompiledCharsmap::PrecompiledCharsmap(std::string_view blob, std::string source)
    : source_(std::move(source)) {
  if (blob.size() < 4)
    fail(source_ + ": precompiled_charsmap is too short (" + std::to_string(blob.size()) + " bytes)");
  uint32_t trie_bytes;
  std::memcpy(&trie_bytes, blob.data(), 4);  // little-endian, as x86 is
  if (trie_bytes % 4 != 0 || trie_bytes == 0 || trie_bytes > blob.size() - 4)
    fail(source_ + ": precompiled_charsmap has a bad trie size " + std::to_string(trie_bytes) +
         " for a blob of " + std::to_string(blob.size()) + " bytes");
  trie_.resize(trie_bytes / 4);
  std::memcpy(trie_.data(), blob.data() + 4, trie_bytes);
  replacements_.assign(blob.substr(4 + trie_bytes));
  if (!utf8::is_valid(replacements_))
    fail(source_ + ": precompiled_charsmap replacements are not valid UTF-8");
}

uint32_t PrecompiledCharsmap::unit(size_t pos) const {
  if (pos >= trie_.size()) fail(source_ + ": corrupt precompiled_charsmap (trie index out of range)");
  return trie_[pos];
}

std::optional<std::string_view> PrecompiledCharsmap::transform(std::string_view chunk) const {
  size_t node = unit_offset(unit(0));
  for (unsigned char c : chunk) {
    if (c == 0) break;
    node ^= c;
    const uint32_t u = unit(node);
    if (unit_label(u) != c) return std::nullopt;
    node ^= unit_offset(u);
    if (unit_has_leaf(u)) {
      const size_t at = unit_value(unit(node));
      if (at > replacements_.size())
        fail(source_ + ": corrupt precompiled_charsmap (replacement offset out of range)");
      const size_t end = replacements_.find('\0', at);
      std::string_view r =
          std::string_view(replacements_).substr(at, end == std::string::npos ? end : end - at);
      // The replacements are valid UTF-8 as a whole; an offset into the middle of a character is corrupt.
      if (!utf8::is_valid(r))
        fail(source_ + ": corrupt precompiled_charsmap (replacement splits a character)");
      return r;  // the shortest match, as `tokenizers` takes results[0]
    }
  }
  return std::nullopt;
}

std::string PrecompiledCharsmap::normalize(std::string_view text) const {
  std::string out;
  out.reserve(text.size() + 16);
  for_each_grapheme(text, source_, [&](size_t begin, size_t end) {
    const std::string_view g = text.substr(begin, end - begin);
    if (g.size() < 6) {
      if (auto r = transform(g)) {
        out += *r;
        return;
      }
    }
    for (size_t i = 0; i < g.size();) {
      const size_t n = sp::utf8_len(static_cast<unsigned char>(g[i]));
      const std::string_view ch = g.substr(i, n);
      if (auto r = transform(ch))
        out += *r;
      else
        out += ch;
      i += n;
    }
  });
  return out;
}

}  // namespace kestrel
