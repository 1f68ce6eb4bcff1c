#include "tokenizers/byte_level.h"

namespace kestrel::byte_level {

namespace {

// GPT-2's bytes_to_unicode(): bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') map to
// themselves; the remaining 68 bytes map, in increasing order, to U+0100, U+0101, ...
struct Tables {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // every code point used is below 256 + 68

  Tables() {
    cp_to_byte.fill(-1);
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + shifted++);
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = int16_t(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t byte_to_codepoint(uint8_t b) {
  return tables().byte_to_cp[b];
}

std::optional<uint8_t> codepoint_to_byte(char32_t cp) {
  const auto& t = tables();
  if (cp >= t.cp_to_byte.size() || t.cp_to_byte[cp] < 0) return std::nullopt;
  return uint8_t(t.cp_to_byte[cp]);
}

std::optional<std::string> token_to_bytes(std::string_view token) {
  if (!utf8::is_valid(token)) return std::nullopt;
  std::string out;
  out.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    const auto b = codepoint_to_byte(utf8::next_codepoint(token, pos));
    if (!b) return std::nullopt;
    out.push_back(char(*b));
  }
  return out;
}

std::string bytes_to_token(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) utf8::append_codepoint(out, byte_to_codepoint(b));
  return out;
}

}  // namespace kestrel::byte_level

namespace kestrel::utf8 {

namespace {

// Length of a well-formed sequence that starts with `lead`, and the allowed range of its second byte (the
// standard's Table 3-7, which rules out overlongs, surrogates and code points above U+10FFFF). 0 = invalid
// lead.
struct LeadInfo {
  int length;
  uint8_t lo, hi;
};

LeadInfo lead_info(uint8_t lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead >= 0xC2 && lead <= 0xDF) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead >= 0xE1 && lead <= 0xEF) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead >= 0xF1 && lead <= 0xF3) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Length of the well-formed sequence at `pos`, or the negated length of the maximal ill-formed subpart there.
int sequence_length(std::string_view s, size_t pos) {
  const auto info = lead_info(uint8_t(s[pos]));
  if (info.length == 0) return -1;
  if (info.length == 1) return 1;
  int n = 1;
  for (; n < info.length && pos + n < s.size(); ++n) {
    const uint8_t c = uint8_t(s[pos + n]);
    const uint8_t lo = n == 1 ? info.lo : 0x80, hi = n == 1 ? info.hi : 0xBF;
    if (c < lo || c > hi) return -n;
  }
  return n == info.length ? n : -n;
}

}  // namespace

char32_t next_codepoint(std::string_view s, size_t& pos) {
  const uint8_t lead = uint8_t(s[pos]);
  const int len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
  char32_t cp = len == 1 ? lead : len == 2 ? (lead & 0x1F) : len == 3 ? (lead & 0x0F) : (lead & 0x07);
  for (int i = 1; i < len && pos + i < s.size(); ++i) cp = (cp << 6) | (uint8_t(s[pos + i]) & 0x3F);
  pos += len;
  return cp;
}

void append_codepoint(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

bool is_valid(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    if (uint8_t(s[pos]) < 0x80) {  // fast path for ASCII
      ++pos;
      continue;
    }
    const int n = sequence_length(s, pos);
    if (n < 0) return false;
    pos += size_t(n);
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const int n = uint8_t(s[pos]) < 0x80 ? 1 : sequence_length(s, pos);
    if (n > 0) {
      out.append(s.substr(pos, size_t(n)));
      pos += size_t(n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal ill-formed subpart
      pos += size_t(-n);
    }
  }
  return out;
}

}  // namespace kestrel::utf8
