// A decode step's whole feed-forward block for one row in one kernel (ops.h: ffn()):
//   x += act(norm(x) · W1ᵀ + b1) · W2ᵀ + b2      (gated: act(norm(x) · W0ᵀ) * (norm(x) · W1ᵀ), no b1)
// Run as two GEMVs it is two kernels, and the hand-over between them (the second cannot start streaming its
// weights until every block of the first has finished) costs about as much as streaming a projection of
// GPT-2 XL (src/kernels/cuda/NOTES.md). Here there is no hand-over: the second projection is split by hidden
// feature instead of by output. Its weight is uploaded transposed, W2t = W2ᵀ [F, D], so hidden feature f's
// contributions to every output are one contiguous row; the warp that computes h[f] multiplies that row by
// h[f] into its own row of fp32 partial outputs in shared memory straight away. Each warp's work is one
// stream of chunks (W1 rows for a pair of features, then their W2t rows, then the next pair's), the next
// chunk in flight while one is used, across every boundary, so the memory never waits for a phase to end.
//
// The partial outputs of a block's warps are summed in shared memory and added to an fp32 accumulator with
// vector atomics (one per four outputs and block); the last block to finish (a counter) adds the
// accumulator and b2 to the residual row and clears both for the next call. Summation order across blocks
// therefore varies from run to run, in the last bits of fp32 only. The session uses it for blocks of at least
// 8 MiB of weights (runtime/cuda_session.cpp, plan_ffn_blocks; measurements in NOTES.md).
#include <algorithm>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/gemv_bulk.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/row_input.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// 16-byte loads per lane and weight row in one chunk (two chunks in flight), with the registers bounded for
// two blocks an SM. Against chunks of 2 with three blocks an SM and chunks of 8 with one (H100, decode step,
// bench/results/gpu_ffn_variants_h100_2026-11-26.txt): GPT-2 XL 2.43 vs 2.66 and 2.64 ms, T5-3B 1.94 vs
// 1.95 and 2.02 ms.
constexpr int kChunk = 4;
constexpr int kBlocksPerSm = 2;
constexpr size_t kMaxSmemBytes = size_t(200) << 10;

struct FfnParams {
  RowInput in;  // the residual row x[D] (fp32), normalised on the way in
  int64_t D, F;
  const void* W1;   // [F, D], gated [2F, D]
  const void* b1;   // [F] in h's dtype, or null
  const void* W2t;  // [F, D]
  const float* b2;  // [D] or null
  Act act;
  bool h_f32;  // h stays fp32; otherwise it is rounded to the weight dtype, as the unfused plan stores it
  float* x;
  float* acc;
  unsigned* counter;
};

// The staged input row's bytes, rounded up to 16 so the partial outputs after it stay float4-aligned.
__host__ __device__ constexpr size_t stage_bytes(int64_t D, size_t weight_bytes) {
  return (size_t(D) * weight_bytes + 15) / 16 * 16;
}

// After every block has added its partial outputs to p.acc: the last block to finish (a counter) adds the
// accumulator (and b2) to the residual row, then clears both for the next call. Every block read x while
// staging, before it counted itself in, so nothing reads x after this write. All threads of the block call
// it.
__device__ void finish_rows(const FfnParams& p) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(p.counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) {
    p.x[d] += __ldcg(p.acc + d) + (p.b2 ? p.b2[d] : 0.0f);
    p.acc[d] = 0.0f;
  }
  if (threadIdx.x == 0) *p.counter = 0;
}

// Warp w of the grid owns hidden features w, w + S, w + 2S, ... (S = warps in the grid), two at a time
// (n, n + S), or one when gated (its two W1 rows n and n + F).
template <typename T, bool kGated>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) ffn_kernel(FfnParams p) {
  extern __shared__ uint4 smem[];
  constexpr int C = kChunk, V = kVec<T>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t D = p.D, F = p.F;
  const int64_t nvec = D / V;
  const int chunks = int((nvec + 32 * C - 1) / (32 * C));
  const int64_t S = int64_t(gridDim.x) * kWarps;
  const int64_t step = kGated ? S : 2 * S;
  const int64_t n0 = int64_t(blockIdx.x) * kWarps + warp;
  const int pairs = n0 < F ? int((F - 1 - n0) / step + 1) : 0;
  const int total = pairs * 2 * chunks;
  const T* W1 = static_cast<const T*>(p.W1);
  const T* W2 = static_cast<const T*>(p.W2t);
  auto row = [&](const T* W, int64_t f) { return reinterpret_cast<const uint4*>(W + f * D); };
  // Chunk q belongs to pair q / (2 chunks): its first `chunks` chunks walk the W1 rows, the rest the W2t
  // rows.
  auto issue = [&](int q, uint4(&w0)[C], uint4(&w1)[C]) {
    if (q >= total) return;
    const int64_t f = n0 + int64_t(q / (2 * chunks)) * step;
    const int r = q % (2 * chunks);
    const bool up = r < chunks;
    const uint4* r1 = nullptr;
    if (kGated) {
      if (up) r1 = row(W1, f + F);
    } else if (f + S < F) {
      r1 = row(up ? W1 : W2, f + S);
    }
    load_pair<C>(row(up ? W1 : W2, f), r1, nvec, int64_t(up ? r : r - chunks) * 32 * C, w0, w1);
  };
  uint4 a0[C], a1[C], b0[C], b1[C];
  issue(0, a0, a1);  // weights never change: before the previous kernel has finished
  pdl_wait();
  pdl_trigger();
  stage_rows<T, float, 1, kThreads>(p.in, reinterpret_cast<T*>(smem));
  const uint4* xv = smem;
  const T* bias_t = static_cast<const T*>(p.b1);
  const float* bias_f = static_cast<const float*>(p.b1);
  auto bias = [&](int64_t f) { return !p.b1 ? 0.0f : p.h_f32 ? bias_f[f] : to_f32(bias_t[f]); };

  // The warp's partial outputs: its own row of fp32 sums in shared memory (after the staged input), which
  // each lane updates at the columns of its loads only.
  float* part = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + stage_bytes(D, sizeof(T)));
  float* out = part + warp * D;
  for (int64_t d = lane; d < D; d += 32) out[d] = 0.0f;
  __syncwarp();
  // Chunk q is in registers a (chunk q + 1 loading into b while a is used).
  int q = 0;
  auto next = [&] { issue(q + 1, b0, b1); };
  auto shift = [&] {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      a0[c] = b0[c];
      a1[c] = b1[c];
    }
    ++q;
  };
  for (int j = 0; j < pairs; ++j) {
    const int64_t f = n0 + int64_t(j) * step;
    const bool has_second = kGated || f + S < F;
    float d0 = 0.0f, d1 = 0.0f;
    for (int c = 0; c < chunks; ++c) {  // h = x · W1 rows
      next();
#pragma unroll
      for (int cc = 0; cc < C; ++cc) {
        const int64_t i = int64_t(c) * 32 * C + lane + 32 * cc;
        if (i < nvec) {
          float w[V], xf[V];
          widen<T>(xv[i], xf);
          widen<T>(a0[cc], w);
#pragma unroll
          for (int e = 0; e < V; ++e) d0 += w[e] * xf[e];
          if (has_second) {
            widen<T>(a1[cc], w);
#pragma unroll
            for (int e = 0; e < V; ++e) d1 += w[e] * xf[e];
          }
        }
      }
      shift();
    }
    d0 = warp_sum(d0);
    d1 = warp_sum(d1);
    float h0, h1 = 0.0f;
    if (kGated) {
      h0 = activate(p.act, d0) * d1;
    } else {
      h0 = activate(p.act, d0 + bias(f));
      if (has_second) h1 = activate(p.act, d1 + bias(f + S));
    }
    if (!p.h_f32) {
      h0 = to_f32(from_f32<T>(h0));
      h1 = to_f32(from_f32<T>(h1));
    }
    for (int c = 0; c < chunks; ++c) {  // out += h · W2t rows
      next();
#pragma unroll
      for (int cc = 0; cc < C; ++cc) {
        const int64_t i = int64_t(c) * 32 * C + lane + 32 * cc;
        if (i < nvec) {
          float w[V], u[V];
          widen<T>(a0[cc], w);
          if (!kGated && has_second) {
            widen<T>(a1[cc], u);
          } else {
#pragma unroll
            for (int e = 0; e < V; ++e) u[e] = 0.0f;
          }
          float4* o = reinterpret_cast<float4*>(out + i * V);
#pragma unroll
          for (int e = 0; e < V; e += 4) {
            float4 v = o[e / 4];
            v.x += h0 * w[e] + h1 * u[e];
            v.y += h0 * w[e + 1] + h1 * u[e + 1];
            v.z += h0 * w[e + 2] + h1 * u[e + 2];
            v.w += h0 * w[e + 3] + h1 * u[e + 3];
            o[e / 4] = v;
          }
        }
      }
      shift();
    }
  }

  // The block's warps' partial outputs summed, then one vector atomic per four outputs.
  __syncthreads();
  for (int64_t d = int64_t(threadIdx.x) * 4; d < D; d += kThreads * 4) {
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float4 v = *reinterpret_cast<const float4*>(part + w * D + d);
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    atomic_add4(p.acc + d, sum);
  }

  finish_rows(p);
}

// Shared memory: the staged input row, then kWarps rows of fp32 partial outputs.
size_t smem_bytes(int64_t D, size_t weight_bytes) {
  return stage_bytes(D, weight_bytes) + size_t(kWarps) * size_t(D) * 4;
}

template <typename T, bool kGated>
void launch(const FfnParams& p, cudaStream_t stream) {
  auto* kernel = ffn_kernel<T, kGated>;
  const size_t smem = smem_bytes(p.D, sizeof(T));
  static size_t allowed = 0;
  allow_shared_memory(kernel, smem, allowed, "ffn");
  const int sms = sm_count();
  int per_sm = 0;
  check(int(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem)), "ffn");
  const int64_t units = kGated ? p.F : (p.F + 1) / 2;  // feature pairs (gated: features)
  // KESTREL_FFN_BLOCKS=n: a grid of n blocks (tuning experiments)
  static const int64_t forced = env_int("KESTREL_FFN_BLOCKS");
  const int64_t blocks = std::clamp<int64_t>(forced > 0 ? forced : (units + kWarps - 1) / kWarps, 1,
                                             int64_t(std::max(per_sm, 1)) * sms);
  launch_pdl(kernel, dim3(unsigned(blocks)), dim3(kThreads), smem, stream, p);
}

// The bulk-copy variant (sm_90; src/kernels/cuda/NOTES.md has its measurements). Block b (one an SM) owns a
// contiguous range of hidden features, so its W1 rows and its W2t rows are two contiguous ranges of memory;
// one producer thread copies them group by group (W features: an "up" stage of their W1 rows, gated also of
// their W1 rows F further on, then a "down" stage of their W2t rows) with bulk copies into a ring of
// shared-memory stages, the whole ring requested before pdl_wait(). So what a block has in flight is bounded
// by shared memory (kBulkRingBytes) instead of registers, and the weight stream runs on through the up/down
// boundaries. 16 consumer warps (kBulkConsumerWarps): in an up stage each warp dots one row pair with the
// staged input and writes h; in a down stage each thread adds h · W2t into the output vectors it owns (fp32
// in shared memory, no atomics), which at the end go to p.acc with vector atomics like the kernel above.
namespace bulk {

constexpr int kConsumerWarps = kBulkConsumerWarps;
constexpr int kThreads = (kConsumerWarps + 1) * 32;  // and one more warp, whose first lane produces
constexpr int kMaxStages = 8;
constexpr size_t kBarrierBytes = 2 * kMaxStages * sizeof(uint64_t);

struct Params {
  FfnParams f;
  int group, stages;                                  // R (= kConsumerWarps) features a group, S ring slots
  unsigned stage_bytes, x_at, out_at, h_at, ring_at;  // shared-memory offsets
};

struct Layout {
  int group, stages;
  size_t stage_bytes, x_at, out_at, h_at, ring_at, total;
};

Layout layout(int64_t D, size_t weight_bytes, bool gated) {
  const size_t ring = bulk_ring_bytes();
  const size_t row_bytes = size_t(D) * weight_bytes, unit = (gated ? 2 : 1) * row_bytes;
  Layout l{};
  l.group = kConsumerWarps;
  l.stage_bytes = size_t(l.group) * unit;
  l.stages = int(std::clamp<size_t>(ring / l.stage_bytes, 2, kMaxStages));
  l.x_at = kBarrierBytes;
  l.out_at = l.x_at + stage_bytes(D, weight_bytes);
  l.h_at = l.out_at + size_t(D) * 4;
  l.ring_at = l.h_at + 2 * kConsumerWarps * 4;
  l.total = l.ring_at + size_t(l.stages) * l.stage_bytes;
  return l;
}

template <typename T, bool kGated>
__global__ void __launch_bounds__(kThreads, 2) ffn_bulk_kernel(Params bp) {
  const FfnParams& p = bp.f;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem + bp.x_at);
  float* out = reinterpret_cast<float*>(smem + bp.out_at);  // the block's partial outputs [D]
  float* hs = reinterpret_cast<float*>(smem + bp.h_at);     // h of a group, two alternating
  unsigned char* slots = smem + bp.ring_at;
  constexpr int V = kVec<T>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t D = p.D, F = p.F, nvec = D / V;
  const int R = bp.group, S = bp.stages;
  const BulkRing ring{reinterpret_cast<uint64_t*>(smem), reinterpret_cast<uint64_t*>(smem) + kMaxStages, S,
                      kConsumerWarps};
  const int64_t row_bytes = D * int64_t(sizeof(T));
  const int64_t f_begin = F * blockIdx.x / gridDim.x, f_end = F * (blockIdx.x + 1) / gridDim.x;
  const int groups = int((f_end - f_begin + R - 1) / R), stages = 2 * groups;
  const char* W1 = static_cast<const char*>(p.W1);
  const char* W2 = static_cast<const char*>(p.W2t);
  auto rows_of = [&](int g) { return int(std::min<int64_t>(R, f_end - f_begin - int64_t(g) * R)); };
  // Stage i: group i / 2, up (even) or down (odd).
  auto fill = [&](int i, uint64_t* bar) {
    unsigned char* dst = slots + size_t(i % S) * bp.stage_bytes;
    const int64_t f = f_begin + int64_t(i / 2) * R;
    const unsigned bytes = unsigned(rows_of(i / 2) * row_bytes);
    if (i % 2 == 0) {
      mbar_arrive_expect(bar, kGated ? 2 * bytes : bytes);
      bulk_copy(dst, W1 + f * row_bytes, bytes, bar);
      if (kGated) bulk_copy(dst + R * row_bytes, W1 + (F + f) * row_bytes, bytes, bar);
    } else {
      mbar_arrive_expect(bar, bytes);
      bulk_copy(dst, W2 + f * row_bytes, bytes, bar);
    }
  };
  const bool producer = warp == kConsumerWarps && lane == 0;
  if (producer) ring.start(stages, fill);  // the weights' first stages before the previous kernel ends
  pdl_wait();
  pdl_trigger();
  // Ends with __syncthreads(): the barriers are visible too. Rows of up to kNormRegs * kThreads elements are
  // normalised from registers; a bound of 16 (as the bulk GEMV has) measured 2-3 % slower on GPT-2 XL.
  stage_rows<T, float, 1, kThreads>(p.in, xs);

  if (warp == kConsumerWarps) {
    if (producer)
      for (int i = S; i < stages; ++i) ring.produce(i, fill);
  } else {
    const int t = threadIdx.x;
    for (int64_t v = t; v < nvec; v += kConsumerWarps * 32)
#pragma unroll
      for (int e = 0; e < V; ++e) out[v * V + e] = 0.0f;
    const uint4* xv = reinterpret_cast<const uint4*>(xs);
    const T* bias_t = static_cast<const T*>(p.b1);
    const float* bias_f = static_cast<const float*>(p.b1);
    auto dot = [&](const uint4* w) { return warp_sum(dot_row<T>(w, xv, nvec)); };
    auto stage_at = [&](int i) {
      ring.wait(i);
      return reinterpret_cast<const uint4*>(slots + size_t(i % S) * bp.stage_bytes);
    };
    for (int g = 0; g < groups; ++g) {
      const int64_t f0 = f_begin + int64_t(g) * R;
      const int rows = rows_of(g);
      float* h = hs + (g & 1) * kConsumerWarps;
      const uint4* up = stage_at(2 * g);
      for (int j = warp; j < rows; j += kConsumerWarps) {
        const float d0 = dot(up + j * nvec);
        float hj;
        if (kGated) {
          hj = activate(p.act, d0) * dot(up + (R + j) * nvec);
        } else {
          const int64_t f = f0 + j;
          hj = activate(p.act, d0 + (!p.b1 ? 0.0f : p.h_f32 ? bias_f[f] : to_f32(bias_t[f])));
        }
        if (!p.h_f32) hj = to_f32(from_f32<T>(hj));
        if (lane == 0) h[j] = hj;
      }
      ring.release(2 * g);
      // h of group g is complete, and h of g - 1 (whose buffer group g + 1 takes) read by every warp
      bar_sync(1, kConsumerWarps * 32);
      const uint4* down = stage_at(2 * g + 1);
      for (int64_t v = t; v < nvec; v += kConsumerWarps * 32) {
        float acc[V];
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] = out[v * V + e];
        for (int j = 0; j < rows; ++j) {
          float w[V];
          widen<T>(down[j * nvec + v], w);
          const float hj = h[j];
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += hj * w[e];
        }
#pragma unroll
        for (int e = 0; e < V; ++e) out[v * V + e] = acc[e];
      }
      ring.release(2 * g + 1);
    }
    for (int64_t v = t; v < nvec; v += kConsumerWarps * 32)
#pragma unroll
      for (int e = 0; e < V; e += 4)
        atomic_add4(p.acc + v * V + e, *reinterpret_cast<const float4*>(out + v * V + e));
  }
  finish_rows(p);
}

// Blocks of at least this many bytes of weights take the bulk form. Decode step, H100, against the register
// form, same calls (bench/results/gpu_bulk_regression_h100_2026-11-26.txt): GPT-2 XL (41 MB a block) 2.14 vs
// 2.31 ms, T5-3B (67 MB) 1.685 vs 1.710 ms; GPT-2 small (9.4 MB: 23 features a block, two groups, so the ring
// never fills) 0.374 vs 0.317 ms (gpu_bulk_variants_h100_2026-11-26.txt). Medium, large and T5-large (17, 26
// and 16 MB) were measured only with a slower build of this kernel and keep the register form.
constexpr size_t kMinBytes = size_t(32) << 20;

// On sm_90, for blocks of kMinBytes or more (KESTREL_FFN_BULK=1: any size, 0: never), where two stages fit
// the GPU's shared memory.
bool usable(int64_t D, int64_t F, size_t weight_bytes, bool gated) {
  static const EnvSwitch mode = env_switch("KESTREL_FFN_BULK");
  if (mode == EnvSwitch::Off || !hopper_or_later()) return false;
  const size_t bytes = size_t(D) * size_t(F) * (gated ? 3 : 2) * weight_bytes;
  if (mode != EnvSwitch::On && bytes < kMinBytes) return false;
  return layout(D, weight_bytes, gated).total <= max_shared_bytes();
}

template <typename T, bool kGated>
void launch(const FfnParams& p, cudaStream_t stream) {
  auto* kernel = ffn_bulk_kernel<T, kGated>;
  const Layout l = layout(p.D, sizeof(T), kGated);
  static size_t allowed = 0;
  allow_shared_memory(kernel, l.total, allowed, "ffn_bulk");
  static const int64_t forced = env_int("KESTREL_FFN_BLOCKS");
  const int64_t blocks = std::clamp<int64_t>(forced > 0 ? forced : sm_count(), 1, p.F);
  Params bp{p,
            l.group,
            l.stages,
            unsigned(l.stage_bytes),
            unsigned(l.x_at),
            unsigned(l.out_at),
            unsigned(l.h_at),
            unsigned(l.ring_at)};
  launch_pdl(kernel, dim3(unsigned(blocks)), dim3(kThreads), l.total, stream, bp);
}

}  // namespace bulk

}  // namespace

bool ffn_supported(int64_t D, int64_t F, DType wt) {
  if (wt != DType::F32 && wt != DType::F16 && wt != DType::BF16) return false;
  const int64_t vec = 16 / int64_t(dtype_size(wt));
  if (D <= 0 || F <= 0 || D % vec != 0) return false;
  return 2 * smem_bytes(D, dtype_size(wt)) <= kMaxSmemBytes;  // two blocks an SM
}

void ffn(const FfnArgs& a, Stream stream) {
  if (!ffn_supported(a.D, a.F, a.wt)) internal_error("ffn: unsupported shape");
  if (a.in.xt != DType::F32 || a.in.rows) internal_error("ffn: the input must be one fp32 residual row");
  if (a.ht != DType::F32 && a.ht != a.wt)
    internal_error("ffn: the hidden dtype is neither fp32 nor the weights'");
  if (!aligned16(a.W1) || !aligned16(a.W2t) || !aligned16(a.in.x) || !aligned16(a.acc))
    internal_error("ffn: operands not 16-byte aligned");
  FfnParams p{RowInput{a.in.x, nullptr, a.in.gamma, a.in.beta, a.in.rms, a.in.eps, a.in.out_scale, 1, a.D},
              a.D,
              a.F,
              a.W1,
              a.b1,
              a.W2t,
              a.b2,
              a.act,
              a.ht == DType::F32,
              static_cast<float*>(const_cast<void*>(a.in.x)),
              a.acc,
              a.counter};
  dispatch_dtype(a.wt, [&](auto w) {
    using T = decltype(w);
    if (bulk::usable(a.D, a.F, sizeof(T), a.gated))
      a.gated ? bulk::launch<T, true>(p, stream) : bulk::launch<T, false>(p, stream);
    else
      a.gated ? launch<T, true>(p, stream) : launch<T, false>(p, stream);
  });
  check_launch("ffn");
}

}  // namespace kestrel::cuda
