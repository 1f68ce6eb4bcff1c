// Fused attention: one block of 4 warps per (query token, head, key split). The query sits in registers, each
// warp walks every 4th key of the split with an online softmax (running max m, running sum l, running
// weighted sum of values acc), and the warps merge through shared memory. Scores never reach device memory:
//   s_j = scale · q·k_j + bias(j - i);   out = Σ_j exp(s_j - m) v_j / Σ_j exp(s_j - m)
// Lane L of a warp owns dimensions L, L+32, ... of the head, so key and value rows are read coalesced.
// With several splits (long decode contexts), each block writes (m, l, acc) and a second kernel merges them.
#include <algorithm>

#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kWarps = 4;

// DPL: dimensions per lane, ceil(head_dim / 32) rounded up to a power of two (a compile-time register count).
template <typename T, int DPL>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttentionArgs a) {
  __shared__ float s_m[kWarps], s_l[kWarps];
  __shared__ float s_acc[kWarps][kMaxHeadDim];

  const int t = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = a.head_dim;
  const int row = a.tok_row[t];
  const int qpos = a.tok_pos[t];
  int count = a.key_count[row];
  if (a.causal) count = min(count, qpos + 1);
  const int chunk = (count + splits - 1) / splits;
  const int k0 = split * chunk, k1 = min(count, k0 + chunk);

  const T* q = static_cast<const T*>(a.q) + int64_t(t) * a.q_stride + int64_t(h) * D;
  const T* kb = static_cast<const T*>(a.k) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;
  const T* vb = static_cast<const T*>(a.v) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;

  float qr[DPL], acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < D ? to_f32(q[d]) * a.scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int j = k0 + warp; j < k1; j += kWarps) {
    const T* kr = kb + int64_t(j) * a.kv_stride;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      if (d < D) s += qr[i] * to_f32(kr[d]);
    }
    s = warp_sum(s);
    if (a.bias_table) s += a.bias_table[int64_t(a.bucket[j - qpos + a.bucket_center]) * a.heads + h];
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float p = expf(s - m_new);
    l = l * correction + p;
    const T* vr = vb + int64_t(j) * a.kv_stride;
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      if (d < D) acc[i] = acc[i] * correction + p * to_f32(vr[d]);
    }
    m = m_new;
  }

  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + 32 * i;
    if (d < D) s_acc[warp][d] = acc[i];
  }
  __syncthreads();

  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w]);
  float weight[kWarps];
  float L = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - M);
    L += s_l[w] * weight[w];
  }
  if (splits == 1) {
    T* out = static_cast<T*>(a.out) + int64_t(t) * a.out_stride + int64_t(h) * D;
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float v = 0.0f;
      for (int w = 0; w < kWarps; ++w) v += s_acc[w][d] * weight[w];
      out[d] = from_f32<T>(v * inv);
    }
    return;
  }
  float* part = a.partials + ((int64_t(t) * a.heads + h) * splits + split) * (D + 2);
  if (threadIdx.x == 0) {
    part[0] = M;
    part[1] = L;
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) v += s_acc[w][d] * weight[w];
    part[2 + d] = v;
  }
}

// Merges the splits of one (token, head): out = Σ_s acc_s e^(m_s - M) / Σ_s l_s e^(m_s - M).
template <typename T>
__global__ void attention_merge_kernel(AttentionArgs a) {
  const int t = blockIdx.x, h = blockIdx.y, D = a.head_dim, splits = a.splits;
  const float* part = a.partials + (int64_t(t) * a.heads + h) * splits * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, part[s * (D + 2)]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = part[s * (D + 2)];
    if (ms != -INFINITY) L += part[s * (D + 2) + 1] * expf(ms - M);
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  T* out = static_cast<T*>(a.out) + int64_t(t) * a.out_stride + int64_t(h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = part[s * (D + 2)];
      if (ms != -INFINITY) v += part[s * (D + 2) + 2 + d] * expf(ms - M);
    }
    out[d] = from_f32<T>(v * inv);
  }
}

}  // namespace

void attention(const AttentionArgs& a, Stream stream) {
  if (a.T == 0) return;
  if (a.head_dim < 1 || a.head_dim > kMaxHeadDim)
    fail("attention: head_dim " + std::to_string(a.head_dim) + " is not supported by the CUDA backend (1.." +
         std::to_string(kMaxHeadDim) + "); use --device cpu");
  if (a.splits < 1 || (a.splits > 1 && !a.partials)) internal_error("attention: bad split configuration");
  const dim3 grid(unsigned(a.T), unsigned(a.heads), unsigned(a.splits));
  dispatch_dtype(a.dtype, [&](auto z) {
    using T = decltype(z);
    const int dpl = (a.head_dim + 31) / 32;
    if (dpl <= 1)
      attention_kernel<T, 1><<<grid, kWarps * 32, 0, stream>>>(a);
    else if (dpl <= 2)
      attention_kernel<T, 2><<<grid, kWarps * 32, 0, stream>>>(a);
    else if (dpl <= 4)
      attention_kernel<T, 4><<<grid, kWarps * 32, 0, stream>>>(a);
    else
      attention_kernel<T, 8><<<grid, kWarps * 32, 0, stream>>>(a);
    if (a.splits > 1) attention_merge_kernel<T><<<dim3(unsigned(a.T), unsigned(a.heads)), 64, 0, stream>>>(a);
  });
  check_launch("attention");
}

}  // namespace kestrel::cuda
