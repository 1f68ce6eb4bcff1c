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

void check_reorder(const std::vector<int64_t>& src_rows, int64_t batch, int64_t max_batch) {
  if (src_rows.empty()) fail("reorder: empty row list");
  if (max_batch > 0 && int64_t(src_rows.size()) > max_batch)
    fail("reorder: " + std::to_string(src_rows.size()) + " rows exceed the session's --max-batch of " +
         std::to_string(max_batch));
  for (int64_t s : src_rows) check_row_index(s, batch, "reorder: source row");
}

void check_row_index(int64_t b, int64_t batch, const char* what) {
  if (b < 0 || b >= batch)
    fail(std::string(what) + " " + std::to_string(b) + " is outside the batch of " + std::to_string(batch));
}

}  // namespace kestrel
