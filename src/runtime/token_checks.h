#pragma once
// The checks every Session makes on the token rows and row indices it is given, so each backend reports bad input the same way.
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/session.h"

namespace kestrel {

// Fails (kestrel::Error naming `what` and the row) if a row is empty or holds an id outside [0, vocab). For
// decoder rows (`cached_length` given: the tokens row b already holds), the total must stay within the
// model's `max_positions` and, when `max_length` > 0, the session's --max-length.
void check_token_rows(const TokenRows& rows, const char* what, int64_t vocab,
                      const std::function<int64_t(size_t)>& cached_length, int64_t max_positions,
                      int64_t max_length = 0);

// Fails unless `src_rows` (reorder's argument) is non-empty, within `max_batch` (> 0; 0 = no limit) and names
// rows of the current batch of `batch` rows.
void check_reorder(const std::vector<int64_t>& src_rows, int64_t batch, int64_t max_batch);

// Fails unless 0 <= b < batch; `what` names the call.
void check_row_index(int64_t b, int64_t batch, const char* what);

}  // namespace kestrel
