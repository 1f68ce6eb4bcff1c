// T5 relative-position bias. The bucket function follows transformers' T5Attention._relative_position_bucket
// line by line (including the float32 log and the truncating cast) so every distance lands in the same
// bucket.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

int64_t t5_relative_bucket(int64_t relative_position, bool bidirectional, int64_t num_buckets,
                           int64_t max_distance) {
  int64_t bucket = 0;
  int64_t n = relative_position;
  if (bidirectional) {
    num_buckets /= 2;
    if (n > 0) bucket += num_buckets;
    n = std::llabs(n);
  } else {
    n = -std::min<int64_t>(n, 0);
  }
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return bucket + n;
  // torch: log(float(n) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact), in
  // float32 (the python float divisor is rounded to float32 when it meets the tensor).
  const float ratio = float(n) / float(max_exact);
  const float denom = float(std::log(double(max_distance) / double(max_exact)));
  const float scaled = std::log(ratio) / denom * float(num_buckets - max_exact);
  // Callers validate max_distance > max_exact; the guard keeps a NaN or infinity from reaching the integer
  // cast.
  if (!(scaled < float(num_buckets))) return bucket + num_buckets - 1;
  const int64_t large = std::min(max_exact + int64_t(scaled), num_buckets - 1);
  return bucket + large;
}

void t5_position_bias(const float* weight, int64_t heads, int64_t max_rel, bool bidirectional,
                      int64_t num_buckets, int64_t max_distance, float* out) {
  const int64_t span = 2 * max_rel + 1;
#pragma omp parallel for schedule(static)
  for (int64_t r = -max_rel; r <= max_rel; ++r) {
    const int64_t b = t5_relative_bucket(r, bidirectional, num_buckets, max_distance);
    for (int64_t h = 0; h < heads; ++h) out[h * span + r + max_rel] = weight[b * heads + h];
  }
}

}  // namespace kestrel::cpu
