// Multi-head attention, one (row, query, head) at a time: scores for that query over the visible keys live in
// one thread-local row, then softmax and the weighted sum of values. The full score matrix is never built, so
// memory stays O(keys) per thread whatever the sequence length.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

namespace {

void attend_one(const AttentionSegment& s, const AttentionParams& p, int64_t i, int64_t h,
                std::vector<float>& row) {
  const int64_t hd = p.head_dim;
  const float* q = s.q + i * s.q_stride + h * hd;
  const int64_t qpos = s.q_start + i;
  const int64_t visible = p.causal ? std::min(s.n_keys, qpos + 1) : s.n_keys;
  float* out = s.out + i * s.out_stride + h * hd;
  if (visible <= 0) {  // nothing to attend to: define the result as zeros rather than NaN
    std::fill(out, out + hd, 0.0f);
    return;
  }
  row.resize(size_t(visible));
  const float* bias = p.bias ? p.bias + h * p.bias_span + p.bias_offset - qpos : nullptr;
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    const float* k = s.k + j * s.kv_stride + h * hd;
    float dot = 0.0f;
    for (int64_t d = 0; d < hd; ++d) dot += q[d] * k[d];
    float sc = dot * p.scale;
    if (bias) sc += bias[j];
    row[size_t(j)] = sc;
    mx = std::max(mx, sc);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < visible; ++j) {
    row[size_t(j)] = std::exp(row[size_t(j)] - mx);
    sum += row[size_t(j)];
  }
  const float inv = 1.0f / sum;
  std::fill(out, out + hd, 0.0f);
  for (int64_t j = 0; j < visible; ++j) {
    const float w = row[size_t(j)] * inv;
    const float* v = s.v + j * s.kv_stride + h * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] += w * v[d];
  }
}

}  // namespace

void attention(const std::vector<AttentionSegment>& segments, const AttentionParams& p) {
  // Flatten (segment, query) so the parallel loop balances rows of different lengths.
  std::vector<std::pair<int64_t, int64_t>> work;
  for (size_t s = 0; s < segments.size(); ++s)
    for (int64_t i = 0; i < segments[s].n_queries; ++i) work.emplace_back(int64_t(s), i);
  const int64_t n = int64_t(work.size()) * p.heads;
#pragma omp parallel
  {
    std::vector<float> row;
#pragma omp for schedule(dynamic, 4)
    for (int64_t w = 0; w < n; ++w) {
      const auto [s, i] = work[size_t(w / p.heads)];
      attend_one(segments[size_t(s)], p, i, w % p.heads, row);
    }
  }
}

}  // namespace kestrel::cpu
