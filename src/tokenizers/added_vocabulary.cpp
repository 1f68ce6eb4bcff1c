#include "tokenizers/added_vocabulary.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "core/error.h"
#include "tokenizers/byte_level.h"

namespace kestrel {

namespace {

// Rust's char::is_whitespace: the Unicode White_Space property.
bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust's char::is_alphanumeric (Alphabetic or Numeric), asked of PCRE2's Unicode tables.
bool is_alphanumeric(std::string_view one_char) {
  static pcre2_code* const code = [] {
    int error = 0;
    PCRE2_SIZE offset = 0;
    auto* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>("^[\\p{Alphabetic}\\p{N}]"), PCRE2_ZERO_TERMINATED,
                            PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (!c) internal_error("added-token word-boundary regex does not compile");
    return c;
  }();
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(code, nullptr);
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(one_char.data()), one_char.size(), 0,
                             PCRE2_NO_UTF_CHECK, match, nullptr);
  pcre2_match_data_free(match);
  return rc > 0;
}

std::string_view last_char(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (uint8_t(s[start]) & 0xC0) == 0x80) --start;
  return s.substr(start);
}

std::string_view first_char(std::string_view s) {
  size_t end = 0;
  utf8::next_codepoint(s, end);
  return s.substr(0, std::min(end, s.size()));
}

char32_t codepoint_of(std::string_view one_char) {
  size_t pos = 0;
  return utf8::next_codepoint(one_char, pos);
}

}  // namespace

AddedVocabulary::AddedVocabulary(std::vector<Token> tokens) : tokens_(std::move(tokens)) {
  for (auto& table : by_first_byte_) table.resize(256);
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].content.empty())
      continue;  // an empty token would match everywhere; `tokenizers` skips it too
    by_first_byte_[tokens_[i].normalized][uint8_t(tokens_[i].content[0])].push_back(i);
  }
  for (auto& table : by_first_byte_)
    for (auto& list : table)
      std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
        return tokens_[a].content.size() > tokens_[b].content.size();
      });
}

std::vector<AddedVocabulary::Piece> AddedVocabulary::split(std::string_view text) const {
  std::vector<Piece> first;
  split_pass(text, /*normalized=*/false, first);
  std::vector<Piece> out;
  for (const auto& piece : first) {
    if (piece.id >= 0)
      out.push_back(piece);
    else
      split_pass(piece.text, /*normalized=*/true, out);
  }
  return out;
}

void AddedVocabulary::split_pass(std::string_view text, bool normalized, std::vector<Piece>& out) const {
  const auto& table = by_first_byte_[normalized];
  size_t done = 0;  // text before this is already in `out`
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedVocabulary::Token* match = nullptr;
    for (size_t index : table[uint8_t(text[pos])]) {
      if (text.substr(pos).starts_with(tokens_[index].content)) {
        match = &tokens_[index];
        break;  // longest first
      }
    }
    if (!match) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + match->content.size();
    if (match->single_word) {
      const bool free_left = start == 0 || !is_alphanumeric(last_char(text.substr(0, start)));
      const bool free_right = stop == text.size() || !is_alphanumeric(first_char(text.substr(stop)));
      if (!free_left || !free_right) {
        pos = stop;  // matches do not overlap, so the skipped one is not searched again
        continue;
      }
    }
    if (match->lstrip) {
      while (start > done) {
        const auto c = last_char(text.substr(0, start));
        if (!is_whitespace(codepoint_of(c))) break;
        start -= c.size();
      }
    }
    if (match->rstrip) {
      while (stop < text.size()) {
        const auto c = first_char(text.substr(stop));
        if (!is_whitespace(codepoint_of(c))) break;
        stop += c.size();
      }
    }
    if (start > done) out.push_back({text.substr(done, start - done), -1});
    out.push_back({text.substr(start, stop - start), match->id});
    done = pos = stop;
  }
  if (done < text.size()) out.push_back({text.substr(done), -1});
}

}  // namespace kestrel
