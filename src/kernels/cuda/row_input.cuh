#pragma once
// What the decode-sized kernels (gemv.cu, ffn.cu) share: the input rows of a linear layer staged in shared
// memory (gathered, normalised and rounded to the weight dtype on the way in), and weight loads that stream
// past L1.
#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

// M rows of K elements of dtype TX: row m is x[rows[m]] when `rows` is given, normalised when `gamma` is
// (norm() in norm.cu: two-pass fp32 statistics, then gamma, beta, out_scale).
struct RowInput {
  const void* x;
  const int32_t* rows;
  const float* gamma;
  const float* beta;
  bool rms;
  float eps, out_scale;
  int M;
  int64_t K;
};

// A single row of up to kRegs * block size elements (kRegs: stage_rows' last parameter, kNormRegs unless
// given) is normalised from registers (read once).
constexpr int kNormRegs = 8;

// Writes the input rows into xs[M][K] in the weight dtype T; every thread of the kThreads-thread block
// takes part, and xs is complete when it returns.
template <typename T, typename TX, int kRows, int kThreads, int kRegs = kNormRegs>
__device__ void stage_rows(const RowInput& p, T* xs) {
  const int M = p.M;
  const int64_t K = p.K;
  const TX* x = static_cast<const TX*>(p.x);
  auto row = [&](int m) { return x + int64_t(p.rows ? p.rows[m] : m) * K; };
  if (!p.gamma) {
    for (int m = 0; m < M; ++m) {
      const TX* r = row(m);
      for (int64_t k = threadIdx.x; k < K; k += kThreads) xs[m * K + k] = from_f32<T>(to_f32(r[k]));
    }
    __syncthreads();
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (kRows == 1 && K <= kRegs * kThreads) {
    // One row, read once with every load in flight; the block reduces the statistics from registers.
    __shared__ float red[32];
    const TX* r = row(0);
    float v[kRegs];
#pragma unroll
    for (int i = 0; i < kRegs; ++i) {
      const int64_t k = threadIdx.x + int64_t(i) * kThreads;
      v[i] = k < K ? to_f32(r[k]) : 0.0f;
    }
    float mean = 0.0f;
    if (!p.rms) {
#pragma unroll
      for (int i = 0; i < kRegs; ++i) mean += v[i];
      mean = block_sum(mean, red) / float(K);
    }
    float var = 0.0f;
#pragma unroll
    for (int i = 0; i < kRegs; ++i) {
      const int64_t k = threadIdx.x + int64_t(i) * kThreads;
      const float c = v[i] - mean;
      if (k < K) var += c * c;
    }
    const float s = rsqrtf(block_sum(var, red) / float(K) + p.eps);
#pragma unroll
    for (int i = 0; i < kRegs; ++i) {
      const int64_t k = threadIdx.x + int64_t(i) * kThreads;
      if (k < K) {
        float o = (v[i] - mean) * s * p.gamma[k];
        if (p.beta) o += p.beta[k];
        xs[k] = from_f32<T>(o * p.out_scale);
      }
    }
    __syncthreads();
    return;
  }
  // Several rows: warp m computes row m's statistics alone (two passes, the second from L1; shuffles, no
  // block barrier), then every thread writes its share of the normalised rows.
  __shared__ float stats[2 * kRows];
  if (warp < M) {
    const TX* r = row(warp);
    float mean = 0.0f;
    if (!p.rms) {
      for (int64_t k = lane; k < K; k += 32) mean += to_f32(r[k]);
      mean = warp_sum(mean) / float(K);
    }
    float var = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
      const float c = to_f32(r[k]) - mean;
      var += c * c;
    }
    var = warp_sum(var);
    if (lane == 0) {
      stats[2 * warp] = mean;
      stats[2 * warp + 1] = rsqrtf(var / float(K) + p.eps);
    }
  }
  __syncthreads();
  for (int m = 0; m < M; ++m) {
    const TX* r = row(m);
    const float mean = stats[2 * m], s = stats[2 * m + 1];
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      float v = (to_f32(r[k]) - mean) * s * p.gamma[k];
      if (p.beta) v += p.beta[k];
      xs[m * K + k] = from_f32<T>(v * p.out_scale);
    }
  }
  __syncthreads();
}

// Weights are read once per step: stream them past L1 (which keeps the input rows).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// A warp streams two weight rows at once: r0 and r1 (r1 may be null), in chunks of C 16-byte loads per lane
// and row; load_pair issues the chunk starting at vector `base` (rows of nvec vectors).
template <int C>
__device__ __forceinline__ void load_pair(const uint4* r0, const uint4* r1, int64_t nvec, int64_t base,
                                          uint4 (&w0)[C], uint4 (&w1)[C]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t i = base + lane + 32 * c;
    if (i < nvec) {
      w0[c] = ld_stream(r0 + i);
      if (r1) w1[c] = ld_stream(r1 + i);
    }
  }
}

// A lane's share of the dot product of row w with x, both nvec 16-byte vectors in shared memory (two
// independent sums, so the FMAs of a vector do not wait on each other).
template <typename T>
__device__ __forceinline__ float dot_row(const uint4* w, const uint4* x, int64_t nvec) {
  const int lane = threadIdx.x & 31;
  float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll 4
  for (int64_t v = lane; v < nvec; v += 32) {
    float a[kVec<T>], b[kVec<T>];
    widen<T>(w[v], a);
    widen<T>(x[v], b);
#pragma unroll
    for (int e = 0; e < kVec<T>; e += 2) {
      acc0 += a[e] * b[e];
      acc1 += a[e + 1] * b[e + 1];
    }
  }
  return acc0 + acc1;
}

}  // namespace kestrel::cuda
