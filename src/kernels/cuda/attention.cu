// Fused attention: scores, softmax and the weighted sum of values stay in registers and shared memory.
//
// The main kernel (attention_rows_kernel) runs one block of 128 threads per (query token, head, key split),
// in three passes over the split's keys:
//   1. scores: thread i takes keys i, i+128, ...; a key row is read with 16-byte loads, all in flight at
//   once;
//      s_j = scale · q·k_j + bias(j - i) goes to shared memory;
//   2. softmax: block max and sum, p_j = exp(s_j - m);
//   3. values: the threads split as (key group, 16-byte column of the head): each walks its group's keys and
//      accumulates p_j v_j for its columns; the groups are summed through shared memory.
// out = Σ_j p_j v_j / Σ_j p_j. With several splits (decode: enough blocks to fill the GPU) each block writes
// (m, l, acc) and the last one to finish merges them (AttentionArgs::split_counters). In decode with the KV
// store fused in (AttentionArgs::fresh), the block whose split holds the new token's position writes its key
// and value into the cache; and in decode (AttentionArgs::cache_ready) the keys and values already cached are
// loaded before pdl_wait(), overlapping the projection that precedes this kernel.
//
// With the output projection fused in (AttentionArgs::proj_wt; decode of short contexts), the same kernel
// runs one block per (token, head, column slice of the projection): each attends over all of its row's keys,
// then multiplies the head's output into its slice, which it prefetched into shared memory before pdl_wait(),
// and adds the products into the residual stream (project()).
//
// Heads whose size is not a multiple of 16 bytes use attention_kernel: 4 warps, each walking every 4th key
// with an online softmax (lane L owns dimensions L, L+32, ...), merged through shared memory.
#include <algorithm>
#include <cstdlib>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/row_input.cuh"
#include "kernels/cuda/staged_wait.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kWarps = 4;

// The keys query token t sees in split `split` of `splits`: [k0, k1) of its batch row.
struct KeyRange {
  int row, qpos, k0, k1;
};
__device__ __forceinline__ KeyRange key_range(const AttentionArgs& a, int t, int split, int splits) {
  KeyRange r;
  r.row = a.tok_row[t];
  r.qpos = a.tok_pos[t];
  int count = a.key_count[r.row];
  if (a.causal) count = min(count, r.qpos + 1);
  const int chunk = (count + splits - 1) / splits;
  r.k0 = split * chunk;
  r.k1 = min(count, r.k0 + chunk);
  return r;
}

// DPL: dimensions per lane, ceil(head_dim / 32) rounded up to a power of two (a compile-time register count).
template <typename T, int DPL>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttentionArgs a) {
  __shared__ float s_m[kWarps], s_l[kWarps];
  __shared__ float s_acc[kWarps][kMaxHeadDim];

  const int t = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = a.head_dim;
  const KeyRange r = key_range(a, t, split, splits);
  const int row = r.row, qpos = r.qpos, k0 = r.k0, k1 = r.k1;

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

constexpr int kRowThreads = 128;
constexpr int kPrefetchVecs = 8;   // key prefetch before pdl_wait() for heads of up to 8 16-byte vectors
constexpr int kValuePrefetch = 4;  // value rows per thread loaded before pdl_wait()

__device__ __forceinline__ float block_reduce(float v, bool is_max, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, other) : v + other;
  }
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < kRowThreads / 32; ++w) v = is_max ? fmaxf(v, red[w]) : v + red[w];
  return v;
}

// The shared memory of a block: its split's scores, then (with the projection fused in) the weight slice.
__host__ __device__ inline size_t scores_bytes(int64_t keys) {
  return (size_t(keys) * sizeof(float) + 15) / 16 * 16;
}
// The projection's weight slice behind the scores: head_dim rows of `cols` elements of es bytes, rounded to
// 16 bytes (what follows it, the fused GEMV's input row, is read as 16-byte vectors).
__host__ __device__ inline size_t slice_bytes(int64_t head_dim, int64_t cols, size_t es) {
  return (size_t(head_dim) * size_t(cols) * es + 15) / 16 * 16;
}
// Behind the slice, the staged cached keys, then values (AttentionArgs::stage_keys rows each). A row's stride
// is one 16-byte vector more than the head's, so the rows that the 8 threads of a shared-memory phase read in
// the scores pass (consecutive keys, same column) fall in distinct banks.
__host__ __device__ inline int staged_row_vecs(int64_t head_dim, size_t es) {
  return int(size_t(head_dim) * es / 16) + 1;
}
__host__ __device__ inline size_t staged_kv_bytes(int64_t head_dim, int keys, size_t es) {
  return 2 * size_t(keys) * size_t(staged_row_vecs(head_dim, es)) * 16;
}

__device__ __forceinline__ void add_to(float4& a, const float4& b) {
  a.x += b.x;
  a.y += b.y;
  a.z += b.z;
  a.w += b.w;
}

// out[t, c0 + n] += Σ_d o[d] · wslice[d][n] (+ bias[c0 + n] for head 0) over the block's nv column vectors.
// Threads split as (column vector, group of rows d); the groups are summed through `parts`
// (kRowThreads · 8 floats), then added with 16-byte atomics: the heads' sums arrive in any order, so the
// result may differ run to run in the last bits (KESTREL_DETERMINISTIC=1 runs the unfused kernels instead).
// An ordered sum (partials, then the last block of each slice adding them in head order) measured 5-7 %
// slower on the whole decode step: its chain of fence, counter and reads is longer than the attention.
template <typename T>
__device__ __forceinline__ void project(const AttentionArgs& a, const float* o, const T* wslice, int cols,
                                        int nv, int64_t c0, int t, int h, float* parts) {
  constexpr int V = kVec<T>;
  const int D = a.head_dim, tid = threadIdx.x;
  float* out = a.proj_out + int64_t(t) * a.proj_n + c0;
  for (int base = 0; base < nv; base += kRowThreads) {
    const int width = min(nv - base, kRowThreads);  // column vectors this round
    const int groups = kRowThreads / width;
    const int cv = tid % width, g = tid / width;
    float acc[V] = {};
    if (g < groups)
      for (int d = g; d < D; d += groups) {
        float w[V];
        widen<T>(*reinterpret_cast<const uint4*>(wslice + d * cols + (base + cv) * V), w);
        const float od = o[d];
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += od * w[e];
      }
    __syncthreads();  // parts is free (the attention's last reads, or the previous round's)
    if (g < groups)
#pragma unroll
      for (int e = 0; e < V; ++e) parts[(g * width + cv) * V + e] = acc[e];
    __syncthreads();
    for (int i = tid; i < width * V / 4; i += kRowThreads) {
      const int64_t n = int64_t(base) * V + i * 4;
      float4 sum = h == 0 && a.proj_bias ? *reinterpret_cast<const float4*>(a.proj_bias + c0 + n)
                                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int gg = 0; gg < groups; ++gg)
        add_to(sum, *reinterpret_cast<const float4*>(parts + gg * width * V + i * 4));
      atomic_add4(out + n, sum);
    }
  }
}

#ifndef KESTREL_ATTN_PROJECT_MIN_BLOCKS
#define KESTREL_ATTN_PROJECT_MIN_BLOCKS 7
#endif
// The projecting kernel is held to 72 registers a thread (7 blocks an SM) so that a block fits on an SM
// beside three blocks of the QKV GEMV before it and starts its weight prefetch under programmatic dependent
// launch.
constexpr int kProjectMinBlocks = KESTREL_ATTN_PROJECT_MIN_BLOCKS;

// The fused QKV GEMV's share of a block (AttentionArgs::qkv): head h's parts · D features (query, key, value
// dimensions of the head) are dealt to its S column-slice blocks, feature i to block i mod S. Returns the
// weight row (= output column) of the block's j-th feature.
__device__ __forceinline__ int64_t qkv_row(const AttentionArgs& a, int h, int z, int S, int j) {
  const int i = z + S * j, D = a.head_dim;
  return int64_t(i / D) * a.heads * D + int64_t(h) * D + i % D;
}
__device__ __forceinline__ int qkv_block_rows(const AttentionArgs& a, int z, int S) {
  const int n = a.qkv.parts * a.head_dim;
  return z < n ? (n - 1 - z) / S + 1 : 0;
}
// The normalised input row of the fused GEMV is read from registers for up to kQkvRegs * kRowThreads
// elements.
constexpr int kQkvRegs = 16;

// With kProject (AttentionArgs::proj_wt), blockIdx.z is the column slice of the output projection rather
// than a key split: each block attends over all of its row's keys, then projects. With kQkv
// (AttentionArgs::qkv; one row, kProject) the block first computes its share of the head's query, key and
// value (qkv_row), the weight rows prefetched into shared memory before pdl_wait() as far as qkv.smem_rows
// says; it then counts in on its head's counter and waits for the head's other blocks, so the head's
// attention starts as soon as its own features are written: no kernel boundary between the GEMV and the
// attention. Every block has read the residual row before any block adds into it (qkv.staged). Opt-in
// (KESTREL_ATTN_QKV=1): on an H100 it is slower than the GEMV as its own kernel (GPT-2 small 0.392 against
// 0.292 ms a step): with 4 warps a block and one or a few blocks an SM, each warp's chain of instructions
// grows by the GEMV's, while programmatic dependent launch had already hidden most of the boundary it
// removes (kernels/cuda/NOTES.md, "Sixth session").
template <typename T, bool kProject, bool kQkv = false, bool kStage = false>
__global__ void __launch_bounds__(kRowThreads, kProject ? kProjectMinBlocks : 1)
    attention_rows_kernel(AttentionArgs a) {
  static_assert(kProject || !kQkv);
  static_assert(!kStage || (kProject && !kQkv));
  extern __shared__ float4 dynamic_smem[];
  float* scores = reinterpret_cast<float*>(dynamic_smem);  // [keys of this split]
  __shared__ float qs[kMaxHeadDim];  // the scaled query; with kProject, later the head's output
  __shared__ float red[kRowThreads / 32];
  __shared__ __align__(16) float sum_parts[kRowThreads * 8];  // read as float4 by project()
  constexpr int V = kVec<T>;
  const int t = blockIdx.x, h = blockIdx.y;
  const int split = kProject ? 0 : blockIdx.z, splits = kProject ? 1 : gridDim.z;
  const int tid = threadIdx.x;
  const int D = a.head_dim, DV = D / V;
  const KeyRange r = key_range(a, t, split, splits);
  const int row = r.row, qpos = r.qpos, k0 = r.k0, k1 = r.k1;
  T* kb = static_cast<T*>(a.k) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;
  T* vb = static_cast<T*>(a.v) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;
  const T* fresh =
      a.fresh ? static_cast<const T*>(a.fresh) + int64_t(t) * a.fresh_stride + int64_t(h) * D : nullptr;
  const int fresh_pos = fresh ? qpos : -1;
  auto key_row = [&](int j) -> const uint4* {
    return reinterpret_cast<const uint4*>(j == fresh_pos ? fresh + a.fresh_k_offset
                                                         : kb + int64_t(j) * a.kv_stride);
  };
  auto value_row = [&](int j) -> const uint4* {
    return reinterpret_cast<const uint4*>(j == fresh_pos ? fresh + a.fresh_v_offset
                                                         : vb + int64_t(j) * a.kv_stride);
  };

  // With the GEMV fused in, the query, key and value of this token are written inside this kernel by other
  // blocks: read them from L2 (ld.global.cg), never from a stale L1 line.
  auto load = [&](const uint4* p) { return kQkv ? __ldcg(p) : *p; };
  // With kStage (a projecting kernel), the row's first a.stage_keys cached keys and values are copied into
  // shared memory before pdl_wait() (behind the weight slice), so no load after it waits on DRAM for them;
  // the rest are loaded as they are needed (no register prefetch below: it would not fit the register bound).
  T* wslice = reinterpret_cast<T*>(reinterpret_cast<char*>(dynamic_smem) + scores_bytes(a.max_keys));
  const int cols = a.proj_cols;
  uint4* kstage = reinterpret_cast<uint4*>(reinterpret_cast<char*>(wslice) + slice_bytes(D, cols, sizeof(T)));
  const int RS = staged_row_vecs(D, sizeof(T));  // a staged row's stride in 16-byte vectors
  uint4* vstage = kstage + int64_t(a.stage_keys) * RS;
  const int staged = kStage && a.cache_ready ? max(0, min(k1 - k0, a.stage_keys)) : 0;
  auto is_staged = [&](int j) { return kStage && j - k0 < staged && j != fresh_pos; };
  if (staged > 0) {
    for (int i = tid; i < staged * DV; i += kRowThreads) {
      const int j = i / DV, c = i - j * DV;
      if (k0 + j == fresh_pos) continue;
      const int64_t at = int64_t(k0 + j) * a.kv_stride + c * V;
      cp_async16(kstage + j * RS + c, kb + at);
      cp_async16(vstage + j * RS + c, vb + at);
    }
    cp_async_commit();
  }
  // Cached keys do not depend on the kernels before this one in the step: load the first one early (before
  // pdl_wait(); with the GEMV fused in, once its features are written, while the head's blocks finish
  // theirs).
  uint4 kpre[kPrefetchVecs];
  const int j_pre = k0 + tid;
  const bool prefetched = !kStage && a.cache_ready && DV <= kPrefetchVecs && j_pre < k1 && j_pre != fresh_pos;
  // Likewise the first kValuePrefetch cached value rows this thread will weigh (pass 3 below).
  const int groups = kRowThreads / DV, g = tid / DV, c = tid % DV;
  uint4 vpre[kValuePrefetch];
  auto prefetch_cache = [&] {
    if (prefetched) {
      const uint4* kr = key_row(j_pre);
#pragma unroll
      for (int c = 0; c < kPrefetchVecs; ++c)
        if (c < DV) kpre[c] = kr[c];
    }
    if constexpr (!kStage) {
#pragma unroll
      for (int i = 0; i < kValuePrefetch; ++i) {
        const int j = k0 + g + i * groups;
        if (a.cache_ready && g < groups && j < k1 && j != fresh_pos) vpre[i] = value_row(j)[c];
      }
    }
  };
  if constexpr (!kQkv) prefetch_cache();
  // The projection's weight slice: rows h·D .. h·D + D - 1, columns c0 .. c0 + nc - 1, into shared memory
  // behind the scores (row stride proj_cols), in flight while the kernel before this one finishes.
  const int64_t c0 = kProject ? int64_t(blockIdx.z) * cols : 0;
  const int nv = kProject ? int(min(int64_t(cols), a.proj_n - c0)) / V : 0;  // 16-byte vectors a row
  // The fused GEMV's staged input row and its weight rows, behind the slice (qkv_smem()).
  const int64_t K = a.qkv.K, kvecs = K / V;
  T* xs = reinterpret_cast<T*>(vstage + int64_t(a.stage_keys) * RS);
  T* wrows = xs + kvecs * V;
  const int S = kProject ? gridDim.z : 1, z = kProject ? blockIdx.z : 0;
  const int qkv_rows = kQkv ? qkv_block_rows(a, z, S) : 0;
  const int smem_rows = min(qkv_rows, a.qkv.smem_rows);
  if constexpr (kQkv) {  // the rows this block multiplies first: before everything else
    const T* W = static_cast<const T*>(a.qkv.W);
    for (int j = 0; j < smem_rows; ++j) {
      const T* src = W + qkv_row(a, h, z, S, j) * K;
      for (int64_t i = tid; i < kvecs; i += kRowThreads) cp_async16(wrows + j * K + i * V, src + i * V);
    }
    cp_async_commit();
  }
  if constexpr (kProject) {
    const T* w = static_cast<const T*>(a.proj_wt) + int64_t(h) * D * a.proj_n + c0;
    for (int i = tid; i < D * nv; i += kRowThreads) {
      const int d = i / nv, cv = i - d * nv;
      cp_async16(wslice + d * cols + cv * V, w + int64_t(d) * a.proj_n + cv * V);
    }
    cp_async_commit();
  }
  pdl_wait();
  pdl_trigger();

  unsigned long long all_staged = 0;  // kQkv: the count at which every block has read the residual row
  if constexpr (kQkv) {
    const LinearInput& in = a.qkv.in;
    stage_rows<T, float, 1, kRowThreads, kQkvRegs>(
        RowInput{in.x, nullptr, in.gamma, in.beta, in.rms, in.eps, in.out_scale, 1, K}, xs);
    const int lin = h * S + z;  // one row: blockIdx.x == 0
    if (tid == 0) all_staged = arrive(a.qkv.staged, lin, a.heads * S);
    cp_async_wait<1>();  // the weight rows (the slice, committed after them, may still be in flight)
    __syncthreads();
    const T* W = static_cast<const T*>(a.qkv.W);
    const T* bias = static_cast<const T*>(a.qkv.bias);
    T* y = static_cast<T*>(a.qkv.y);
    const int warp = tid >> 5, lane = tid & 31;
    const uint4* xv = reinterpret_cast<const uint4*>(xs);
    for (int j = warp; j < qkv_rows; j += kRowThreads / 32) {
      const int64_t row = qkv_row(a, h, z, S, j);
      float acc;
      if (j < smem_rows) {
        acc = dot_row<T>(reinterpret_cast<const uint4*>(wrows + j * K), xv, kvecs);
      } else {
        const uint4* w = reinterpret_cast<const uint4*>(W + row * K);
        float acc0 = 0.0f;
        for (int64_t i = lane; i < kvecs; i += 32) {
          float wf[V], xf[V];
          widen<T>(ld_stream(w + i), wf);
          widen<T>(xv[i], xf);
#pragma unroll
          for (int e = 0; e < V; ++e) acc0 += wf[e] * xf[e];
        }
        acc = acc0;
      }
      acc = warp_sum(acc);
      if (lane == 0) y[row] = from_f32<T>(acc + (bias ? to_f32(bias[row]) : 0.0f));
    }
    prefetch_cache();
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      unsigned long long* counter = a.qkv.head_counters + h;
      wait_until(counter, arrive(counter, z, S), a.qkv.wait);
    }
    __syncthreads();
  }

  // This split holds the new token: cache its key and value (with kProject, the first column slice's block).
  if (fresh && fresh_pos >= k0 && fresh_pos < k1 && (!kProject || blockIdx.z == 0)) {
    const int64_t at = int64_t(fresh_pos) * a.kv_stride;
    for (int d = tid; d < D; d += kRowThreads) {
      kb[at + d] = kQkv ? __ldcg(fresh + a.fresh_k_offset + d) : fresh[a.fresh_k_offset + d];
      vb[at + d] = kQkv ? __ldcg(fresh + a.fresh_v_offset + d) : fresh[a.fresh_v_offset + d];
    }
  }
  const T* q = static_cast<const T*>(a.q) + int64_t(t) * a.q_stride + int64_t(h) * D;
  for (int d = tid; d < D; d += kRowThreads) qs[d] = to_f32(kQkv ? __ldcg(q + d) : q[d]) * a.scale;
  if (staged > 0) cp_async_wait<1>();  // the staged keys and values (the weight slice may still be in flight)
  __syncthreads();

  // 1. scores
  // q · (n 16-byte vectors of a key row from vector c0); indices stay compile-time so kv[] stays in
  // registers.
  auto dot_q = [&](const uint4(&kv)[kPrefetchVecs], int c0, int n) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < kPrefetchVecs; ++c) {
      if (c >= n) break;
      const T* kp = reinterpret_cast<const T*>(&kv[c]);
#pragma unroll
      for (int i = 0; i < V; ++i) s += qs[(c0 + c) * V + i] * to_f32(kp[i]);
    }
    return s;
  };
  float m = -INFINITY;
  for (int j = k0 + tid; j < k1; j += kRowThreads) {
    float s = 0.0f;
    const bool have = prefetched && j == j_pre, in_smem = is_staged(j);
    const uint4* kr = key_row(j);
    const uint4* ks = kstage + (j - k0) * RS;
    for (int c0 = 0; c0 < DV; c0 += kPrefetchVecs) {  // every 16-byte load of a chunk in flight at once
      const int n = min(kPrefetchVecs, DV - c0);
      if (in_smem) {
#pragma unroll
        for (int c = 0; c < kPrefetchVecs; ++c)
          if (c < n) kpre[c] = ks[c0 + c];
      } else if (!have) {
#pragma unroll
        for (int c = 0; c < kPrefetchVecs; ++c)
          if (c < n) kpre[c] = load(kr + c0 + c);
      }
      s += dot_q(kpre, c0, n);
    }
    if (a.bias_table) s += a.bias_table[int64_t(a.bucket[j - qpos + a.bucket_center]) * a.heads + h];
    scores[j - k0] = s;
    m = fmaxf(m, s);
  }
  // 2. softmax
  m = block_reduce(m, true, red);
  float l = 0.0f;
  if (m != -INFINITY)
    for (int j = k0 + tid; j < k1; j += kRowThreads) {
      const float p = expf(scores[j - k0] - m);
      scores[j - k0] = p;
      l += p;
    }
  l = block_reduce(l, false, red);  // its barriers also publish the probabilities
  // 3. values
  float acc[V] = {};
  if (g < groups && m != -INFINITY) {
#pragma unroll
    for (int i = 0; i < kValuePrefetch; ++i) {  // the prefetched rows (or loads where none was possible)
      const int j = k0 + g + i * groups;
      if (j >= k1) break;
      const uint4 vv = is_staged(j)                                 ? vstage[(j - k0) * RS + c]
                       : !kStage && a.cache_ready && j != fresh_pos ? vpre[i]
                                                                    : load(value_row(j) + c);
      const T* vp = reinterpret_cast<const T*>(&vv);
      const float p = scores[j - k0];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] += p * to_f32(vp[e]);
    }
#pragma unroll 4
    for (int j = k0 + g + kValuePrefetch * groups; j < k1; j += groups) {
      const uint4 vv = is_staged(j) ? vstage[(j - k0) * RS + c] : load(value_row(j) + c);
      const T* vp = reinterpret_cast<const T*>(&vv);
      const float p = scores[j - k0];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += p * to_f32(vp[i]);
    }
  }
  if (g < groups)
#pragma unroll
    for (int i = 0; i < V; ++i) sum_parts[g * D + c * V + i] = acc[i];
  __syncthreads();
  float* part = splits > 1 ? a.partials + ((int64_t(t) * a.heads + h) * splits + split) * (D + 2) : nullptr;
  if (part && tid == 0) {
    part[0] = m;
    part[1] = l;
  }
  T* out = static_cast<T*>(a.out) + int64_t(t) * a.out_stride + int64_t(h) * D;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int d = tid; d < D; d += kRowThreads) {
    float v = 0.0f;
    for (int gg = 0; gg < groups; ++gg) v += sum_parts[gg * D + d];
    if (part)
      part[2 + d] = v;
    else if (kProject)  // rounded as the unfused path stores it
      qs[d] = to_f32(from_f32<T>(v * inv));
    else
      out[d] = from_f32<T>(v * inv);
  }
  if constexpr (kProject) {
    if (kQkv && tid == 0) wait_until(a.qkv.staged, all_staged, a.qkv.wait);  // before adding into the row
    cp_async_wait<0>();
    __syncthreads();  // the head's output and the weight slice are in shared memory
    project<T>(a, qs, wslice, cols, nv, c0, t, h, sum_parts);
    return;
  }
  if (!part || !a.split_counters) return;
  // The last split block to finish merges all of them (no merge kernel): publish this block's partial sums,
  // count in, and let the block that completes the count read everyone's.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  int* counter = a.split_counters + int64_t(t) * a.heads + h;
  if (tid == 0) last = atomicAdd(counter, 1) == splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const float* parts = a.partials + (int64_t(t) * a.heads + h) * splits * (D + 2);
  float M = -INFINITY;
  for (int sp = 0; sp < splits; ++sp) M = fmaxf(M, __ldcg(parts + sp * (D + 2)));
  float L = 0.0f;
  for (int sp = 0; sp < splits; ++sp) {
    const float ms = __ldcg(parts + sp * (D + 2));
    if (ms != -INFINITY) L += __ldcg(parts + sp * (D + 2) + 1) * expf(ms - M);
  }
  const float inv_all = L > 0.0f ? 1.0f / L : 0.0f;
  for (int d = tid; d < D; d += kRowThreads) {
    float v = 0.0f;
    for (int sp = 0; sp < splits; ++sp) {
      const float ms = __ldcg(parts + sp * (D + 2));
      if (ms != -INFINITY) v += __ldcg(parts + sp * (D + 2) + 2 + d) * expf(ms - M);
    }
    out[d] = from_f32<T>(v * inv_all);
  }
  if (tid == 0) *counter = 0;  // ready for the next launch
}

// Merges the splits of one (token, head): out = Σ_s acc_s e^(m_s - M) / Σ_s l_s e^(m_s - M).
template <typename T>
__global__ void attention_merge_kernel(AttentionArgs a) {
  pdl_wait();
  pdl_trigger();
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

// attention_rows_kernel reads heads as 16-byte vectors.
bool rows_kernel_fits(const AttentionArgs& a) {
  const int64_t es = int64_t(dtype_size(a.dtype));
  const auto v16 = [](int64_t elems, int64_t es) { return (elems * es) % 16 == 0; };
  return v16(a.head_dim, es) && a.max_keys > 0 && aligned16(a.q) && aligned16(a.k) && aligned16(a.v) &&
         v16(a.q_stride, es) && v16(a.kv_stride, es) &&
         (!a.fresh || (aligned16(a.fresh) && v16(a.fresh_stride, es) && v16(a.fresh_k_offset, es) &&
                       v16(a.fresh_v_offset, es)));
}

}  // namespace

bool attention_can_fuse_store(const AttentionArgs& a) {
  return a.fresh && rows_kernel_fits(a);
}

namespace {

constexpr size_t kMaxProjectSlice = 48 << 10;  // bytes of weights a block prefetches, at most
constexpr size_t kMaxRowsSmem = 160 << 10;

// Columns of each block's slice of the projection: head_dim of them (a square slice), at least one block an
// SM, each slice within kMaxProjectSlice, rounded to 16-byte vectors. Every slice's block repeats its head's
// attention, reading the cached keys and values again (from L2), so the slice grows with the head. On an H100
// (decode step): 64-column slices measured best for GPT-2 small and XL (head_dim 64: 4-5 blocks an SM, many
// short weight streams in flight; bench/results/gpu_attention_projection_variants_h100_2026-11-26.txt), and
// for T5-3B (head_dim 128) 128 columns (8 slices) took 1.591 ms against 1.620-1.630 with 64 (4: 1.599, 6:
// 1.608; bench/results/gpu_attention_slices_h100_2026-11-26.txt). KESTREL_ATTN_SLICES=n forces n slices.
int project_columns(const AttentionArgs& a) {
  const int64_t es = int64_t(dtype_size(a.dtype)), vec = 16 / es;
  const int64_t row_bytes = int64_t(a.head_dim) * es;  // a column's bytes in the slice
  const int64_t cols = a.head_dim;
  int64_t slices =
      std::max({(a.proj_n + cols - 1) / cols, (int64_t(sm_count()) + a.heads - 1) / a.heads,
                (row_bytes * a.proj_n + int64_t(kMaxProjectSlice) - 1) / int64_t(kMaxProjectSlice)});
  static const int64_t forced = env_int("KESTREL_ATTN_SLICES");
  if (forced > 0) slices = forced;
  slices = std::clamp<int64_t>(slices, 1, a.proj_n / vec);
  return int(((a.proj_n + slices - 1) / slices + vec - 1) / vec * vec);
}

size_t project_smem(const AttentionArgs& a, int cols) {
  const size_t es = dtype_size(a.dtype);
  return scores_bytes(a.max_keys) + slice_bytes(a.head_dim, cols, es) +
         staged_kv_bytes(a.head_dim, a.stage_keys, es);
}

// How many of a row's cached keys and values each block of the projecting kernel stages in shared memory
// (AttentionArgs::stage_keys), in steps of 16, none below 16, fewer where the grid's blocks would no longer
// fit on the GPU at once; the rest are read as they are needed. Only heads wider than the register prefetch
// (kPrefetchVecs vectors: T5-3B's 128 dimensions), kStageKeys of them. Decode step, H100, same call
// (bench/results/gpu_attention_staged_kv_h100_2026-11-26.txt): T5-3B 1.525 ms with 64 keys staged, 1.565
// with all that fit (138: 2 blocks an SM), 1.587 with none; GPT-2 XL (heads of 64, keys already prefetched
// into registers) 1.957 / 1.938 / 1.919 ms, small even. KESTREL_ATTN_STAGE_KEYS=n stages n (0: none).
constexpr int64_t kStageKeys = 64;
template <typename T>
int stage_keys(AttentionArgs p, dim3 grid) {
  auto* kernel = attention_rows_kernel<T, true, false, true>;
  static std::atomic<size_t> allowed{0};  // the occupancy query below counts the shared memory it may use
  allow_shared_memory(kernel, kMaxRowsSmem, allowed, "attention with staged keys");
  static const int64_t forced =
      std::getenv("KESTREL_ATTN_STAGE_KEYS") ? std::max<int64_t>(0, env_int("KESTREL_ATTN_STAGE_KEYS")) : -1;
  const int64_t vectors = int64_t(p.head_dim) * int64_t(dtype_size(p.dtype)) / 16;
  const int64_t want = forced >= 0 ? forced : vectors > kPrefetchVecs ? kStageKeys : 0;
  if (!p.cache_ready || p.qkv.W) return 0;
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  const int64_t row = int64_t(staged_kv_bytes(p.head_dim, 1, dtype_size(p.dtype)));
  p.stage_keys = 0;
  const int64_t room = int64_t(kMaxRowsSmem) - int64_t(project_smem(p, p.proj_cols));
  for (int64_t keys = std::min({p.max_keys, want, room / row}) / 16 * 16; keys >= 16; keys -= 16) {
    p.stage_keys = int(keys);
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowThreads,
                                                      project_smem(p, p.proj_cols)) == cudaSuccess &&
        int64_t(per_sm) * sm_count() >= blocks)
      return int(keys);
  }
  return 0;
}

// The fused GEMV's shared memory behind the slice (rounded to 16 bytes): the staged input row, then `rows`
// weight rows.
size_t qkv_smem(const AttentionArgs& a, int cols, int rows) {
  const size_t es = dtype_size(a.dtype), row = size_t(a.qkv.K) * es;
  return project_smem(a, cols) + row + size_t(rows) * row;
}

bool qkv_fits(const AttentionArgs& a) {
  const int64_t es = int64_t(dtype_size(a.dtype)), vec = 16 / es;
  const AttentionQkv& q = a.qkv;
  return q.W && q.y && q.in.x && q.in.gamma && q.in.xt == DType::F32 && !q.in.rows && a.T == 1 &&
         (q.parts == 1 || q.parts == 3) && q.K > 0 && q.K % vec == 0 && aligned16(q.W) && q.head_counters &&
         q.staged && q.wait.fault;
}

// Launches attention_rows_kernel<T, true, true> when all of its blocks fit on the GPU at once (each waits for
// its head's blocks, and for all before adding into the residual), with as many of each block's weight rows
// prefetched into shared memory as that allows; returns false (nothing launched) if they cannot fit.
template <typename T>
bool launch_with_qkv(AttentionArgs p, dim3 grid, cudaStream_t stream) {
  auto* kernel = attention_rows_kernel<T, true, true>;
  static std::atomic<size_t> allowed{0};
  allow_shared_memory(kernel, kMaxRowsSmem, allowed, "attention with the QKV GEMV");
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  const int S = int(grid.z);
  // KESTREL_ATTN_QKV_ROWS=n: at most n rows in shared memory (tuning)
  static const int64_t cap = std::getenv("KESTREL_ATTN_QKV_ROWS") ? env_int("KESTREL_ATTN_QKV_ROWS") : -1;
  const int rows = int(std::min<int64_t>((p.qkv.parts * p.head_dim + S - 1) / S, cap >= 0 ? cap : 1 << 20));
  for (int r = rows;; r = r > 1 ? r / 2 : r - 1) {
    const size_t smem = qkv_smem(p, p.proj_cols, r);
    int per_sm = 0;
    if (smem <= kMaxRowsSmem &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowThreads, smem) == cudaSuccess &&
        int64_t(per_sm) * sm_count() >= blocks) {
      p.qkv.smem_rows = r;
      launch_pdl(kernel, grid, dim3(kRowThreads), smem, stream, p);
      return true;
    }
    if (r == 0) return false;
  }
}

}  // namespace

bool attention_can_project(const AttentionArgs& a) {
  const int64_t es = int64_t(dtype_size(a.dtype)), vec = 16 / es;
  return a.proj_wt && a.proj_out && rows_kernel_fits(a) && a.T >= 1 && a.T <= kMaxProjectRows &&
         a.splits == 1 && !a.q_base && a.proj_n > 0 && a.proj_n % vec == 0 && aligned16(a.proj_wt) &&
         aligned16(a.proj_out) && (!a.proj_bias || aligned16(a.proj_bias)) &&
         project_smem(a, project_columns(a)) <= kMaxRowsSmem;
}

void attention(const AttentionArgs& a, Stream stream) {
  if (a.T == 0) return;
  if (a.head_dim < 1 || a.head_dim > kMaxHeadDim)
    fail("attention: head_dim " + std::to_string(a.head_dim) + " is not supported by the CUDA backend (1.." +
         std::to_string(kMaxHeadDim) + "); use --device cpu");
  if (a.splits < 1 || (a.splits > 1 && !a.partials)) internal_error("attention: bad split configuration");
  if (a.proj_wt) {
    if (!attention_can_project(a))
      internal_error("attention: the fused output projection cannot take this call");
    AttentionArgs p = a;
    p.proj_cols = project_columns(a);
    const dim3 grid(unsigned(a.T), unsigned(a.heads), unsigned((a.proj_n + p.proj_cols - 1) / p.proj_cols));
    if (a.qkv.W && !qkv_fits(a)) internal_error("attention: the fused QKV GEMV cannot take this call");
    dispatch_dtype(a.dtype, [&](auto z) {
      using T = decltype(z);
      if (a.qkv.W) {
        if (launch_with_qkv<T>(p, grid, stream)) return;
        // Its blocks do not all fit at once: the GEMV as its own kernel first.
        const AttentionQkv& q = a.qkv;
        gemv(q.in, 1, q.K, q.W, a.dtype, int64_t(q.parts) * a.heads * a.head_dim, q.bias, Act::Identity,
             false, false, q.y, a.dtype, stream);
        p.qkv = AttentionQkv{};
      }
      static std::atomic<size_t> allowed{0};
      allow_shared_memory(attention_rows_kernel<T, true>, kMaxRowsSmem, allowed,
                          "attention with output projection");
      p.stage_keys = stage_keys<T>(p, grid);
      launch_pdl(
          p.stage_keys > 0 ? attention_rows_kernel<T, true, false, true> : attention_rows_kernel<T, true>,
          grid, dim3(kRowThreads), project_smem(p, p.proj_cols), stream, p);
    });
    check_launch("attention with output projection");
    return;
  }
  if (attention_tc(a, stream)) return;
  const dim3 grid(unsigned(a.T), unsigned(a.heads), unsigned(a.splits));
  dispatch_dtype(a.dtype, [&](auto z) {
    using T = decltype(z);
    const bool rows_kernel = rows_kernel_fits(a);
    if (a.fresh && !rows_kernel) internal_error("attention: fused KV store needs 16-byte aligned heads");
    if (rows_kernel) {
      const size_t smem = size_t((a.max_keys + a.splits - 1) / a.splits) * sizeof(float);
      static std::atomic<size_t> allowed{0};
      allow_shared_memory(attention_rows_kernel<T, false>, kMaxRowsSmem, allowed, "attention");
      if (smem > kMaxRowsSmem)
        fail("attention: " + std::to_string(a.max_keys) +
             " keys per row exceed the CUDA backend's limit; "
             "lower --max-length");
      launch_pdl(attention_rows_kernel<T, false>, grid, dim3(kRowThreads), smem, stream, a);
    } else {
      const int dpl = (a.head_dim + 31) / 32;
      if (dpl <= 1)
        attention_kernel<T, 1><<<grid, kWarps * 32, 0, stream>>>(a);
      else if (dpl <= 2)
        attention_kernel<T, 2><<<grid, kWarps * 32, 0, stream>>>(a);
      else if (dpl <= 4)
        attention_kernel<T, 4><<<grid, kWarps * 32, 0, stream>>>(a);
      else
        attention_kernel<T, 8><<<grid, kWarps * 32, 0, stream>>>(a);
    }
    if (a.splits > 1 && !(rows_kernel && a.split_counters))
      launch_pdl(attention_merge_kernel<T>, dim3(unsigned(a.T), unsigned(a.heads)), dim3(64), 0, stream, a);
  });
  check_launch("attention");
}

}  // namespace kestrel::cuda
