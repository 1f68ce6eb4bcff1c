#pragma once
// GPT-2's byte-level alphabet and the UTF-8 helpers around it.
//
// Byte-level BPE never sees raw bytes in its files: each of the 256 byte values is written as one printable
// Unicode character (printable Latin-1 bytes stand for themselves, the others are shifted to U+0100 and up),
// so vocab.json and merges.txt stay plain text. Kestrel runs BPE directly on bytes and uses these tables only
// to read the files and to turn tokens back into bytes.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kestrel::byte_level {

// The code point that stands for byte `b` in vocab.json / merges.txt.
char32_t byte_to_codepoint(uint8_t b);
// The inverse: the byte that code point `cp` stands for, or nothing if `cp` is outside the byte-level
// alphabet.
std::optional<uint8_t> codepoint_to_byte(char32_t cp);

// Turns a token as written in the files ("Ġthe") into the bytes it stands for (" the"). Returns nothing if
// `token` is not valid UTF-8 or holds a character outside the byte-level alphabet.
std::optional<std::string> token_to_bytes(std::string_view token);
// The inverse of token_to_bytes: any bytes to their byte-level spelling.
std::string bytes_to_token(std::string_view bytes);

}  // namespace kestrel::byte_level

namespace kestrel::utf8 {

// Reads one code point at `pos` of valid UTF-8 and advances `pos`. The caller guarantees validity (see
// to_valid_utf8); used on text Kestrel has already checked or sanitised.
char32_t next_codepoint(std::string_view s, size_t& pos);
// Appends the UTF-8 encoding of `cp`.
void append_codepoint(std::string& out, char32_t cp);
// Whether `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid(std::string_view s);
// Replaces every ill-formed subsequence with U+FFFD using the "maximal subpart" rule of the Unicode standard,
// which is what Python's bytes.decode(errors="replace") and Rust's String::from_utf8_lossy do.
std::string to_valid_utf8(std::string_view s);

}  // namespace kestrel::utf8
