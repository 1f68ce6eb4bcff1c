#pragma once
// The CPU op set: fp32, row-major, multi-threaded (OpenMP loops, oneDNN GEMMs). Every function takes plain
// pointers and sizes so the runtime decides where memory lives; nothing here knows GPT-2 from T5.
// Each kernel has a naive reference in tests/kernels/.
#include <cstdint>
#include <vector>

#include "kernels/act.h"

namespace kestrel::cpu {

// Sets the compute thread count (OpenMP loops and the GEMM split); n <= 0 leaves OpenMP's default (all
// cores).
void set_threads(int n);

using Act = kernels::Act;
float activate(Act act, float x);  // scalar form, the definition the vector loops use

// y[M,N] = act(x[M,K] · W[N,K]ᵀ + bias[N]); bias may be null. With `residual`, y += that instead (the
// residual stream is added after the epilogue, as `h = h + f(h)` in the models).
void linear(const float* x, int64_t M, int64_t K, const float* W, int64_t N, const float* bias, Act act,
            bool residual, float* y);

// Gated FFN input: h = x · [W0; W1]ᵀ ([M, 2F]), y[M,F] = act(h[:, :F]) * h[:, F:]. With `residual`, y +=
// that.
void gated_linear(const float* x, int64_t M, int64_t K, const float* W01, int64_t F, Act act, bool residual,
                  float* y);

// y[M,D] = (x - mean) / sqrt(var + eps) * gamma + beta, statistics in fp32 over D; then * out_scale.
void layer_norm(const float* x, int64_t M, int64_t D, const float* gamma, const float* beta, float eps,
                float out_scale, float* y);
// y[M,D] = x / sqrt(mean(x²) + eps) * gamma, then * out_scale (T5's LayerNorm: no mean, no bias).
void rms_norm(const float* x, int64_t M, int64_t D, const float* gamma, float eps, float out_scale, float* y);
// residual[M,D] += delta; y = norm(residual): the fused residual-add + norm. beta may be null for RMS.
void add_layer_norm(float* residual, const float* delta, int64_t M, int64_t D, const float* gamma,
                    const float* beta, float eps, float* y);
void add_rms_norm(float* residual, const float* delta, int64_t M, int64_t D, const float* gamma, float eps,
                  float* y);

// y[i,:] = table[ids[i], :] (+ pos_table[positions[i], :] when pos_table is given). Ids and positions must
// already be checked against the table sizes by the caller.
void embedding(const int64_t* ids, const int64_t* positions, int64_t M, const float* table,
               const float* pos_table, int64_t D, float* y);

// T5's bucket of a relative position (memory position - query position), as transformers computes it.
int64_t t5_relative_bucket(int64_t relative_position, bool bidirectional, int64_t num_buckets,
                           int64_t max_distance);
// out[h, r + max_rel] = weight[bucket(r), h] for r in [-max_rel, max_rel]; weight is [num_buckets, heads].
// The table holds every distance a forward with keys up to max_rel+1 long can see, computed once per forward.
void t5_position_bias(const float* weight, int64_t heads, int64_t max_rel, bool bidirectional,
                      int64_t num_buckets, int64_t max_distance, float* out);

// One row's queries against that row's keys. Query i sits at key position q_start + i (causal: sees keys
// 0..q_start+i). Element (i or j, head h, d) lives at ptr[i * stride + h * head_dim + d].
struct AttentionSegment {
  const float* q;
  int64_t q_stride, n_queries, q_start;
  const float* k;
  const float* v;
  int64_t kv_stride, n_keys;
  float* out;
  int64_t out_stride;
};
struct AttentionParams {
  int64_t heads, head_dim;
  float scale = 1.0f;
  bool causal = false;
  // Optional bias[h * bias_span + (key_pos - query_pos) + bias_offset] added after scaling (T5).
  const float* bias = nullptr;
  int64_t bias_span = 0, bias_offset = 0;
};
// For every segment, query and head: scores over the visible keys (one row at a time, never a full matrix),
// softmax, then the weighted sum of values. Parallel over (segment, query, head).
void attention(const std::vector<AttentionSegment>& segments, const AttentionParams& p);

}  // namespace kestrel::cpu
