// Decode-sized linear layers (kGemvMaxRows = one input row): a hand-written GEMV, because cuBLASLt's kernels
// for a single row do not stream the weight matrix at the memory's speed.
//
// Each warp computes whole output features, two at a time; its lanes walk both weight rows with 16-byte loads
// (streamed past L1) and dot them with the input row. A warp's work is a sequence of chunks (kChunk loads per
// lane and row); two register buffers alternate so the next chunk is in flight while the current one is
// multiplied, across feature boundaries too. The grid is one wave of at most kBlocksPerSm blocks per SM and
// every warp owns the same number of features (n, n + warps, ...), so no block pays the prologue twice and no
// wave is left half empty. The first chunk is loaded before pdl_wait(): weights never change, so under
// programmatic dependent launch those loads may overlap the end of the previous kernel.
//
// An input that is gathered (row m = x[rows[m]]: the decode step's take_outputs), normalised (LayerNorm /
// RMSNorm with the definition of norm() in norm.cu: two-pass fp32 statistics, then gamma, beta, out_scale and
// rounding to the weight dtype) or converted is staged in shared memory in the weight dtype. So a norm
// followed by the linear it feeds is one kernel, and neither the gathered nor the normalised row is written
// to device memory. Plain rows in the weight dtype are read in place (through L1).
//
// The epilogue adds the bias, applies the activation (or the gate of a gated FFN: act(x·W[n]) * (x·W[n+F])),
// and writes or adds (residual) the result in the output dtype. Accumulation is fp32 throughout. A greedy
// step's LM head also raises each row's argmax key with its outputs (`argmax`), one atomic a warp at most.
#include <algorithm>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/gemv_bulk.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/row_input.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kWarps = 8;  // warps per block
constexpr int kThreads = kWarps * 32;
// 16-byte loads per lane and weight row in one chunk (two rows at a time, two chunks in flight).
// Chunks of 2 with 3 blocks an SM (registers bounded to fit) measured 2-4% faster decode steps on an H100
// than chunks of 4 with 2 blocks (NOTES.md).
constexpr int kChunk = 2;
constexpr size_t kMaxStageBytes = size_t(96) << 10;
constexpr int kBlocksPerSm = 3;

struct GemvParams {
  RowInput in;  // M rows of K elements, staged in shared memory unless plain rows in the weight dtype
  const void* W;
  int64_t N;  // output features (F when gated: W has 2F rows)
  const void* bias;
  Act act;
  bool residual, vector_ok;
  void* y;
  unsigned long long* argmax;  // [M] argmax keys raised with the outputs' (fp32 outputs), or null
};

// Warp w owns features w, w + S, w + 2S, ... (S = warps in the grid) and computes them two at a time:
// (n, n + S) with their own outputs, or, gated, the two halves of feature n. Its work is a sequence of chunks
// (pair, K range); two register buffers alternate, so the next chunk's loads are in flight while the current
// one is multiplied, across pair boundaries too.
template <typename T, typename TX, typename TY, bool kStaged, bool kGated, int kRows>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) gemv_kernel(GemvParams p) {
  extern __shared__ uint4 staged[];
  constexpr int C = kChunk;
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  const int64_t step = kGated ? stride : 2 * stride;
  const int64_t n0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int M = kRows == 1 ? 1 : p.in.M;
  const int64_t K = p.in.K, N = p.N;
  const int64_t nvec = p.vector_ok ? K / kVec<T> : 0;
  const T* W = static_cast<const T*>(p.W);
  auto first = [&](int64_t f) { return reinterpret_cast<const uint4*>(W + f * K); };
  auto second = [&](int64_t f) -> const uint4* {
    if (kGated) return reinterpret_cast<const uint4*>(W + (f + N) * K);
    return f + stride < N ? reinterpret_cast<const uint4*>(W + (f + stride) * K) : nullptr;
  };
  const int chunks = int((nvec + 32 * C - 1) / (32 * C));  // per weight row
  const int pairs = n0 < N ? int((N - 1 - n0) / step + 1) : 0;
  const int total = pairs * chunks;
  auto issue = [&](int q, uint4(&w0)[C], uint4(&w1)[C]) {
    if (q >= total) return;
    const int64_t f = n0 + int64_t(q / chunks) * step;
    load_pair<C>(first(f), second(f), nvec, int64_t(q % chunks) * 32 * C, w0, w1);
  };
  uint4 a0[C], a1[C], b0[C], b1[C];
  issue(0, a0, a1);
  pdl_wait();
  pdl_trigger();

  const T* x;
  if constexpr (kStaged) {
    stage_rows<T, TX, kRows, kThreads>(p.in, reinterpret_cast<T*>(staged));
    x = reinterpret_cast<const T*>(staged);
  } else {
    x = static_cast<const T*>(p.in.x);
  }
  TY* y = static_cast<TY*>(p.y);
  const TY* bias = static_cast<const TY*>(p.bias);

  float acc0[kRows] = {}, acc1[kRows] = {};
  unsigned long long best = 0;  // lane m: the largest argmax key of row m's outputs so far (p.argmax)
  // Lane m writes row m's outputs of feature f (and of its partner).
  auto finish = [&](int64_t f, bool has_second) {
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m >= M) continue;
      acc0[m] = warp_sum(acc0[m]);
      if (has_second) acc1[m] = warp_sum(acc1[m]);
    }
    auto store = [&](int m, int64_t g, float v) {
      TY* out = y + int64_t(m) * N + g;
      if (p.residual) v += to_f32(*out);
      const TY r = from_f32<TY>(v);
      *out = r;
      if (p.argmax) best = max(best, argmax_key(to_f32(r), g));
    };
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < M && lane == m) {
        if (kGated) {
          store(m, f, activate(p.act, acc0[m]) * acc1[m]);
        } else {
          store(m, f, activate(p.act, acc0[m] + (bias ? to_f32(bias[f]) : 0.0f)));
          if (has_second)
            store(m, f + stride, activate(p.act, acc1[m] + (bias ? to_f32(bias[f + stride]) : 0.0f)));
        }
      }
      acc0[m] = acc1[m] = 0.0f;
    }
  };
  auto consume = [&](int q, const uint4(&w0)[C], const uint4(&w1)[C]) {
    const int64_t f = n0 + int64_t(q / chunks) * step;
    const int c = q % chunks;
    const bool has_second = second(f) != nullptr;
#pragma unroll
    for (int cc = 0; cc < C; ++cc) {
      const int64_t i = int64_t(c) * 32 * C + lane + 32 * cc;
      if (i < nvec) {
        float a[kVec<T>], b[kVec<T>];
        widen<T>(w0[cc], a);
        if (has_second) widen<T>(w1[cc], b);
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m >= M) break;
          float xf[kVec<T>];
          widen<T>(reinterpret_cast<const uint4*>(x + int64_t(m) * K)[i], xf);
#pragma unroll
          for (int e = 0; e < kVec<T>; ++e) acc0[m] += a[e] * xf[e];
          if (has_second)
#pragma unroll
            for (int e = 0; e < kVec<T>; ++e) acc1[m] += b[e] * xf[e];
        }
      }
    }
    if (c == chunks - 1) finish(f, has_second);
  };
  for (int q = 0; q < total; q += 2) {
    issue(q + 1, b0, b1);
    consume(q, a0, a1);
    if (q + 1 >= total) break;
    issue(q + 2, a0, a1);
    consume(q + 1, b0, b1);
  }
  if (chunks == 0) {  // rows not 16-byte aligned: element by element
    for (int64_t f = n0; f < N; f += step) {
      const T* r0 = reinterpret_cast<const T*>(first(f));
      const T* r1 = reinterpret_cast<const T*>(second(f));
      for (int64_t k = lane; k < K; k += 32) {
        const float a = to_f32(r0[k]);
        const float b = r1 ? to_f32(r1[k]) : 0.0f;
#pragma unroll
        for (int m = 0; m < kRows; ++m)
          if (m < M) {
            const float xv = to_f32(x[int64_t(m) * K + k]);
            acc0[m] += a * xv;
            acc1[m] += b * xv;
          }
      }
      finish(f, r1 != nullptr);
    }
  }
  if (p.argmax && lane < M) raise_argmax_key(p.argmax + lane, best);
}

// Tall rows (GPT-2's second FFN projection, T5's wo: few output features, long rows): in gemv_kernel most
// warps would have no feature and the rest a long serial walk, so here the eight warps of a block split each
// feature's row instead, and reduce the eight partial sums through shared memory in a fixed order (the result
// does not depend on timing). Block b takes features b, b + grid, ...; a gated feature's two rows together.
// 16-byte loads per lane and row in flight (two rows when gated: fewer, to stay in the 3-blocks-an-SM
// registers)
template <bool kGated>
constexpr int kTallLoads = kGated ? 4 : 8;

template <typename T, typename TX, typename TY, bool kStaged, bool kGated>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) gemv_tall_kernel(GemvParams p) {
  extern __shared__ uint4 staged[];
  __shared__ float part[kWarps][2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t K = p.in.K, N = p.N;
  const int64_t nvec = K / kVec<T>;
  const int64_t per_warp = (nvec + kWarps - 1) / kWarps;
  const int64_t v0 = warp * per_warp, v1 = min(nvec, v0 + per_warp);
  const T* W = static_cast<const T*>(p.W);
  auto row = [&](int64_t f) { return reinterpret_cast<const uint4*>(W + f * K); };
  constexpr int kLoads = kTallLoads<kGated>;
  uint4 w0[kLoads], w1[kLoads];
  auto issue = [&](int64_t f, int64_t base) {
#pragma unroll
    for (int c = 0; c < kLoads; ++c) {
      const int64_t i = base + lane + 32 * c;
      if (i < v1) {
        w0[c] = ld_stream(row(f) + i);
        if (kGated) w1[c] = ld_stream(row(f + N) + i);
      }
    }
  };
  const int64_t f_first = blockIdx.x;
  if (f_first < N) issue(f_first, v0);  // weights never change: before the previous kernel has finished
  pdl_wait();
  pdl_trigger();
  const T* x;
  if constexpr (kStaged) {
    stage_rows<T, TX, 1, kThreads>(p.in, reinterpret_cast<T*>(staged));
    x = reinterpret_cast<const T*>(staged);
  } else {
    x = static_cast<const T*>(p.in.x);
  }
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  TY* y = static_cast<TY*>(p.y);
  const TY* bias = static_cast<const TY*>(p.bias);
  for (int64_t f = f_first; f < N; f += gridDim.x) {
    float acc0 = 0.0f, acc1 = 0.0f;
    for (int64_t base = v0; base < v1; base += 32 * kLoads) {
      if (base != v0 || f != f_first) issue(f, base);
#pragma unroll
      for (int c = 0; c < kLoads; ++c) {
        const int64_t i = base + lane + 32 * c;
        if (i < v1) {
          float xf[kVec<T>], a[kVec<T>];
          widen<T>(xv[i], xf);
          widen<T>(w0[c], a);
#pragma unroll
          for (int e = 0; e < kVec<T>; ++e) acc0 += a[e] * xf[e];
          if (kGated) {
            widen<T>(w1[c], a);
#pragma unroll
            for (int e = 0; e < kVec<T>; ++e) acc1 += a[e] * xf[e];
          }
        }
      }
    }
    acc0 = warp_sum(acc0);
    if (kGated) acc1 = warp_sum(acc1);
    if (lane == 0) {
      part[warp][0] = acc0;
      part[warp][1] = acc1;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        s0 += part[w][0];
        s1 += part[w][1];
      }
      float v = kGated ? activate(p.act, s0) * s1 : activate(p.act, s0 + (bias ? to_f32(bias[f]) : 0.0f));
      if (p.residual) v += to_f32(y[f]);
      const TY r = from_f32<TY>(v);
      y[f] = r;
      if (p.argmax) raise_argmax_key(p.argmax, argmax_key(to_f32(r), f));  // few features a block here
    }
    __syncthreads();
  }
}

// One wave of at most kBlocksPerSm blocks per SM, every warp owning ceil(N / warps) features.
template <typename T, typename TX, typename TY, bool kStaged, bool kGated, int kRows>
void launch(const GemvParams& p, cudaStream_t stream) {
  auto* kernel = gemv_kernel<T, TX, TY, kStaged, kGated, kRows>;
  const size_t smem = kStaged ? size_t(p.in.M) * size_t(p.in.K) * sizeof(T) : 0;
  static std::atomic<size_t> allowed{0}, allowed_tall{0};
  allow_shared_memory(kernel, kMaxStageBytes, allowed, "gemv");
  if constexpr (kRows == 1)
    allow_shared_memory(gemv_tall_kernel<T, TX, TY, kStaged, kGated>, kMaxStageBytes, allowed_tall, "gemv");
  const int sms = sm_count();
  int per_sm = 0;
  check(int(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem)), "gemv");
  // At most kBlocksPerSm of ours per SM: the rest of each SM stays free for the next kernel's blocks, which
  // programmatic dependent launch starts early so their weight loads overlap this kernel.
  static const int cap = [] {  // KESTREL_GEMV_BLOCKS_PER_SM overrides kBlocksPerSm (tuning experiments)
    const int64_t n = env_int("KESTREL_GEMV_BLOCKS_PER_SM");
    return n > 0 ? int(n) : kBlocksPerSm;
  }();
  const int64_t resident_warps = int64_t(std::clamp(per_sm, 1, cap)) * sms * kWarps;
  // Fewer feature pairs than half the warps, and rows long enough for every warp of a block: split the rows.
  const int64_t units = kGated ? p.N : (p.N + 1) / 2;
  // KESTREL_GEMV_TALL=0: never split rows (comparisons)
  static const bool tall_off = env_switch("KESTREL_GEMV_TALL") == EnvSwitch::Off;
  if (kRows == 1 && !tall_off && p.vector_ok && units * 2 < resident_warps &&
      p.in.K / kVec<T> >= 32 * kWarps) {
    const int64_t blocks = std::min<int64_t>(p.N, resident_warps / kWarps);
    launch_pdl(gemv_tall_kernel<T, TX, TY, kStaged, kGated>, dim3(unsigned(blocks)), dim3(kThreads), smem,
               stream, p);
    return;
  }
  int64_t per_warp = (p.N + resident_warps - 1) / resident_warps;
  if (!kGated) per_warp += per_warp % 2;  // features come in pairs
  const int64_t warps = (p.N + per_warp - 1) / per_warp;
  launch_pdl(kernel, dim3(blocks_for(warps, kWarps)), dim3(kThreads), smem, stream, p);
}

}  // namespace

bool gemv_stages_input(int64_t M, int64_t K, DType wt) {
  return M >= 1 && M <= kGemvMaxRows && size_t(M) * size_t(K) * dtype_size(wt) <= kMaxStageBytes;
}

void gemv(const LinearInput& in, int64_t M, int64_t K, const void* W, DType wt, int64_t N, const void* bias,
          Act act, bool gated, bool residual, void* y, DType yt, Stream stream, unsigned long long* argmax) {
  if (M == 0) return;
  if (M > kGemvMaxRows) internal_error("gemv: more rows than kGemvMaxRows");
  // Plain rows in the weight dtype are read where they are (through L1); anything else is staged.
  const bool staged = in.rows || in.gamma || in.xt != wt;
  if (staged && !gemv_stages_input(M, K, wt))
    internal_error("gemv: a gathered, normalised or converted input too large to stage");
  if (in.xt != DType::F32 && in.xt != wt)
    internal_error("gemv: input dtype is neither fp32 nor the weights'");
  if (yt != DType::F32 && yt != wt) internal_error("gemv: output dtype is neither fp32 nor the weights'");
  if (argmax && (yt != DType::F32 || gated)) internal_error("gemv: an argmax of 16-bit or gated outputs");
  if (M == 1 && !gated && gemv_bulk_supported(K, N, wt, W)) {
    gemv_bulk(in, K, W, wt, N, bias, act, residual, y, yt, stream, argmax);
    return;
  }
  GemvParams p{RowInput{in.x, in.rows, in.gamma, in.beta, in.rms, in.eps, in.out_scale, int(M), K},
               W,
               N,
               bias,
               act,
               residual,
               false,
               y,
               argmax};
  p.vector_ok = (K * int64_t(dtype_size(wt))) % 16 == 0 && aligned16(W) && (staged || aligned16(in.x));
  dispatch_linear_dtypes(wt, in.xt, yt, [&](auto w, auto x, auto y) {
    using T = decltype(w);
    using TX = decltype(x);
    using TY = decltype(y);
    if (staged)
      gated ? launch<T, TX, TY, true, true, kGemvMaxRows>(p, stream)
            : launch<T, TX, TY, true, false, kGemvMaxRows>(p, stream);
    else
      gated ? launch<T, T, TY, false, true, kGemvMaxRows>(p, stream)
            : launch<T, T, TY, false, false, kGemvMaxRows>(p, stream);
  });
  check_launch("gemv");
}

}  // namespace kestrel::cuda
