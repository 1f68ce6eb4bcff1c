#pragma once
// The checks every Session makes on the token rows it is fed, so each backend reports bad input the same way.
#include <cstdint>
#include <functional>

#include "runtime/session.h"

namespace kestrel {

// Fails (kestrel::Error naming `what` and the row) if a row is empty or holds an id outside [0, vocab). For
// decoder rows (`cached_length` given: the tokens row b already holds), the total must stay within the
// model's `max_positions` and, when `max_length` > 0, the session's --max-length.
void check_token_rows(const TokenRows& rows, const char* what, int64_t vocab,
                      const std::function<int64_t(size_t)>& cached_length, int64_t max_positions,
                      int64_t max_length = 0);

}  // namespace kestrel
