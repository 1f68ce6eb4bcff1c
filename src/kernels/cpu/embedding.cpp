// Token embedding gather, plus learned positions for GPT-2 (wte[id] + wpe[pos]).
#include <cstring>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

void embedding(const int64_t* ids, const int64_t* positions, int64_t M, const float* table,
               const float* pos_table, int64_t D, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    const float* e = table + ids[i] * D;
    float* out = y + i * D;
    if (!pos_table) {
      std::memcpy(out, e, size_t(D) * sizeof(float));
      continue;
    }
    const float* p = pos_table + positions[i] * D;
    for (int64_t j = 0; j < D; ++j) out[j] = e[j] + p[j];
  }
}

}  // namespace kestrel::cpu
