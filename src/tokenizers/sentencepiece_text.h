#pragma once
// Small UTF-8 helpers of the SentencePiece (Unigram) tokenizer, over the shared ones of byte_level.h.
#include <cstddef>
#include <string_view>

#include "tokenizers/byte_level.h"

namespace kestrel::sp {

// Byte length of the UTF-8 sequence that starts with `lead` (1..4); the text is valid UTF-8.
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// The code point starting at byte i of valid UTF-8.
inline char32_t codepoint_at(std::string_view s, size_t i) {
  return utf8::next_codepoint(s, i);
}

// Unicode White_Space, as Rust's char::is_whitespace (what `tokenizers`' WhitespaceSplit and Strip test).
bool is_unicode_whitespace(char32_t cp);

}  // namespace kestrel::sp
