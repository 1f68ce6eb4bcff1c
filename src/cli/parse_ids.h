#pragma once
// Parses "1,2,3" or "1 2 3" into token ids; each must lie in [0, vocab_size). `what` names the option in errors.
#include <charconv>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace kestrel::cli {

inline std::vector<int64_t> parse_ids(const std::string& s, const std::string& what, int64_t vocab_size) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ',' || s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '[' || s[i] == ']') {
      ++i;
      continue;
    }
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data() + i, s.data() + s.size(), v);
    if (ec != std::errc() || p == s.data() + i)
      fail(what + ": '" + s + "' is not a list of integer token ids");
    if (v < 0 || v >= vocab_size)
      fail(what + ": token id " + std::to_string(v) + " is outside the vocabulary [0, " +
           std::to_string(vocab_size) + ")");
    ids.push_back(v);
    i = size_t(p - s.data());
  }
  return ids;
}

}  // namespace kestrel::cli
