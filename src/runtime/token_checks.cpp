#include "runtime/token_checks.h"

#include <string>

#include "core/error.h"

namespace kestrel {

void check_token_rows(const TokenRows& rows, const char* what, int64_t vocab,
                      const std::function<int64_t(size_t)>& cached_length, int64_t max_positions,
                      int64_t max_length) {
  for (size_t b = 0; b < rows.size(); ++b) {
    const std::string row = std::string(what) + ": row " + std::to_string(b);
    if (rows[b].empty()) fail(row + " is empty");
    for (int64_t id : rows[b])
      if (id < 0 || id >= vocab)
        fail(std::string(what) + ": token id " + std::to_string(id) + " in row " + std::to_string(b) +
             " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    if (!cached_length) continue;
    const int64_t want = cached_length(b) + int64_t(rows[b].size());
    if (want > max_positions)
      fail(row + " would reach " + std::to_string(want) + " tokens, more than the model's " +
           std::to_string(max_positions) + " positions (n_positions)");
    if (max_length > 0 && want > max_length)
      fail(row + " would reach " + std::to_string(want) +
           " tokens, more than the session's --max-length of " + std::to_string(max_length));
  }
}

}  // namespace kestrel
