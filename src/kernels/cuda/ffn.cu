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
// The partial outputs of a block's warps are summed in shared memory and added to the residual row with
// vector atomics (one per four outputs and block), once every block has staged its input (arrive_staged).
// Summation order across blocks therefore varies from run to run, in the last bits of fp32 only. The session
// uses it for blocks of at least 8 MiB of weights (runtime/cuda_session.cpp, plan_ffn_blocks; measurements in
// NOTES.md).
#include <algorithm>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/gemv_bulk.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/row_input.cuh"
#include "kernels/cuda/staged_wait.cuh"

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
  unsigned long long* staged;  // FfnArgs::staged
  BlockWait wait;              // FfnArgs::wait
};

// The staged input row's bytes, rounded up to 16 so the partial outputs after it stay float4-aligned.
__host__ __device__ constexpr size_t stage_bytes(int64_t D, size_t weight_bytes) {
  return (size_t(D) * weight_bytes + 15) / 16 * 16;
}

// Every block reads the residual row x while it stages its input and adds its partial outputs into the same
// row at the end, so no block may add before every block has staged: a counter says when (staged_wait.cuh).
// Until 2026-11-26 blocks added into an accumulator instead, and the last block to finish (another counter)
// added that to x and cleared it: a chain of fence, counter, reads and writes after the last block's work
// that cost GPT-2 XL's decode step 4.5 % and small's 7 % (bench/results/gpu_ffn_tail_h100_2026-11-26.txt). A
// block arrives (one thread, after the __syncthreads that ends its staging), which returns the count at which
// all have; the round trip's result is needed only at the end, in wait_staged().
__device__ __forceinline__ unsigned long long arrive_staged(unsigned long long* counter) {
  return arrive(counter, blockIdx.x, gridDim.x);
}

__device__ __forceinline__ void wait_staged(const FfnParams& p, unsigned long long target) {
  wait_until(p.staged, target, p.wait);
}

// x[d] += the block's partial output sums[d] (and b2, once: block 0), one vector atomic per four outputs. The
// whole block calls it, after a __syncthreads() that follows wait_staged().
__device__ __forceinline__ void add_to_residual(const FfnParams& p, const float* sums) {
  const bool bias = blockIdx.x == 0 && p.b2;
  for (int64_t d = int64_t(threadIdx.x) * 4; d < p.D; d += int64_t(blockDim.x) * 4) {
    float4 v = *reinterpret_cast<const float4*>(sums + d);
    if (bias) {
      v.x += p.b2[d];
      v.y += p.b2[d + 1];
      v.z += p.b2[d + 2];
      v.w += p.b2[d + 3];
    }
    atomic_add4(p.x + d, v);
  }
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
  const unsigned long long all_staged = threadIdx.x == 0 ? arrive_staged(p.staged) : 0;
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

  // The block's warps' partial outputs summed into warp 0's row, then added to x.
  __syncthreads();
  for (int64_t d = int64_t(threadIdx.x) * 4; d < D; d += kThreads * 4) {
    float4 sum = *reinterpret_cast<const float4*>(part + d);
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      const float4 v = *reinterpret_cast<const float4*>(part + w * D + d);
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    *reinterpret_cast<float4*>(part + d) = sum;
  }
  if (threadIdx.x == 0) wait_staged(p, all_staged);
  __syncthreads();
  add_to_residual(p, part);
}

// Shared memory: the staged input row, then kWarps rows of fp32 partial outputs.
size_t smem_bytes(int64_t D, size_t weight_bytes) {
  return stage_bytes(D, weight_bytes) + size_t(kWarps) * size_t(D) * 4;
}

template <typename T, bool kGated>
void launch(const FfnParams& p, cudaStream_t stream) {
  auto* kernel = ffn_kernel<T, kGated>;
  const size_t smem = smem_bytes(p.D, sizeof(T));
  static std::atomic<size_t> allowed{0};
  allow_shared_memory(kernel, smem, allowed, "ffn");
  const int sms = sm_count();
  int per_sm = 0;
  check(int(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem)), "ffn");
  const int64_t units = kGated ? p.F : (p.F + 1) / 2;  // feature pairs (gated: features)
  // At most what is resident at once: every block waits for all to have staged (arrive_staged).
  // KESTREL_FFN_BLOCKS=n: a grid of n blocks, even more than that (tuning, and the test of the bounded wait)
  static const int64_t forced = env_int("KESTREL_FFN_BLOCKS");
  const int64_t blocks =
      forced > 0 ? forced
                 : std::clamp<int64_t>((units + kWarps - 1) / kWarps, 1, int64_t(std::max(per_sm, 1)) * sms);
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
// in shared memory, no atomics), which at the end go to x with vector atomics like the kernel above (with
// tensor cores: mma_consumers). The producer arrives on the staged counter and waits on it, off the
// consumers' path.
namespace bulk {

constexpr int kConsumerWarps = kBulkConsumerWarps;
constexpr int kThreads = (kConsumerWarps + 1) * 32;  // and one more warp, whose first lane produces
constexpr int kMaxStages = 8;
constexpr size_t kBarrierBytes = 2 * kMaxStages * sizeof(uint64_t);
// Tensor-core consumers: 16 × 16 tiles of D a warp at most, so the fp32 accumulators of the down projection
// (4 registers a tile) stay in registers (D up to 7 * 16 * 16 = 1792: every GPT-2 and T5 v1.0 size).
constexpr int kMaxTiles = 7;
static_assert(kConsumerWarps == 16, "a group's 16 features are the rows of one mma tile");

struct Params {
  FfnParams f;
  int group, stages;                                  // R (= kConsumerWarps) features a group, S ring slots
  unsigned stage_bytes, x_at, out_at, h_at, ring_at;  // shared-memory offsets
  unsigned row_stride;                                // bytes between a stage's rows (padded for mma)
};

struct Layout {
  int group, stages;
  size_t stage_bytes, x_at, out_at, h_at, ring_at, total, row_stride;
};

// With tensor-core consumers (mma) each row of a stage is copied on its own, 16 bytes past the end of the
// previous one: rows of every real model are a multiple of 128 bytes, so unpadded, the eight rows an
// ldmatrix phase reads would all fall in the same four banks. Their h region holds each warp's partial
// dot products of a group (gated: both rows of a feature), two groups alternating.
Layout layout(int64_t D, size_t weight_bytes, bool gated, bool mma) {
  const size_t ring = bulk_ring_bytes();
  const size_t row_bytes = size_t(D) * weight_bytes;
  Layout l{};
  l.group = kConsumerWarps;
  l.row_stride = row_bytes + (mma ? 16 : 0);
  l.stage_bytes = size_t(l.group) * (gated ? 2 : 1) * l.row_stride;
  l.stages = int(std::clamp<size_t>(ring / l.stage_bytes, 2, kMaxStages));
  l.x_at = kBarrierBytes;
  l.out_at = l.x_at + stage_bytes(D, weight_bytes);
  l.h_at = l.out_at + size_t(D) * 4;
  l.ring_at = l.h_at + 2 * kConsumerWarps * (mma ? kConsumerWarps * (gated ? 2 : 1) : 1) * 4;
  l.total = l.ring_at + size_t(l.stages) * l.stage_bytes;
  return l;
}

// Tensor-core consumers for 16-bit weights whose h is rounded to them (so h · W2t takes the same products as
// the FMA loop) and D a multiple of 16 within kMaxTiles (KESTREL_FFN_MMA=0: never).
bool mma_usable(int64_t D, size_t weight_bytes, bool h_f32) {
  static const EnvSwitch mode = env_switch("KESTREL_FFN_MMA");
  return mode != EnvSwitch::Off && weight_bytes == 2 && !h_f32 && D % 16 == 0 &&
         D <= int64_t(16) * kConsumerWarps * kMaxTiles;
}

// The consumer warps of ffn_bulk_kernel with tensor cores (kMma). A 16-bit weight vector costs the FMA loops
// a shared-memory load, eight conversions and eight FMAs (what bounded this kernel's first versions,
// NOTES.md); here one ldmatrix and one mma take a 16 × 16 tile. Group g (R = 16 features f0..f0+15):
//  - up: h = act(W1[f0..] · x + b1) (gated: act(W0 · x) * (W1 · x)). The group's rows are the tile rows;
//    warp w takes the 16-wide slices of D w, w + 16, ... with x as the B operand (every column the same x),
//    and writes its 16 (gated 32) partial sums; after a barrier every warp adds the 16 warps' partials in the
//    same order, so all warps hold the same h, rounded to T, and pass it to B by shuffles.
//  - down: out[d] += Σ_f W2t[f][d] h[f], the stage read transposed (tile rows are 16 outputs d, columns the
//    group's features); warp w owns output tiles w, w + 16, ... for the whole call, accumulating in
//    registers, so the partial outputs reach shared memory once, at the end.
// Rows past the end of a block's last group are garbage in the ring: their h is 0 and their weights are
// masked to 0 before the down tile's mma (0 · NaN would not be 0).
template <typename T, bool kGated>
__device__ void mma_consumers(const Params& bp, const BulkRing& ring, const T* xs, float* out, float* parts,
                              const unsigned char* slots, int64_t f_begin, int64_t f_end) {
  const FfnParams& p = bp.f;
  constexpr int R = kConsumerWarps, kUpRows = kGated ? 2 * R : R;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, q = lane & 3;
  const int tiles = int(p.D / 16), stride = int(bp.row_stride);
  const int groups = int((f_end - f_begin + R - 1) / R);
  const T* bias = static_cast<const T*>(p.b1);
  float acc[kMaxTiles][4] = {};
  for (int g = 0; g < groups; ++g) {
    const int64_t f0 = f_begin + int64_t(g) * R;
    const int rows = int(std::min<int64_t>(R, f_end - f0));
    float* part = parts + (g & 1) * kConsumerWarps * kUpRows;
    ring.wait(2 * g);
    const unsigned char* up = slots + size_t((2 * g) % bp.stages) * bp.stage_bytes;
    float c0[4] = {}, c1[4] = {};
    for (int s = warp; s < tiles; s += kConsumerWarps) {
      const uint32_t b0 = *reinterpret_cast<const uint32_t*>(xs + s * 16 + 2 * q);
      const uint32_t b1 = *reinterpret_cast<const uint32_t*>(xs + s * 16 + 2 * q + 8);
      uint32_t a[4];
      ldmatrix_x4<false>(a, a_tile_row<false>(up + s * 32, lane, stride));
      mma_16816<T>(c0, a, b0, b1);
      if constexpr (kGated) {
        ldmatrix_x4<false>(a, a_tile_row<false>(up + R * stride + s * 32, lane, stride));
        mma_16816<T>(c1, a, b0, b1);
      }
    }
    if (q == 0) {
      part[warp * kUpRows + gq] = c0[0];
      part[warp * kUpRows + gq + 8] = c0[2];
      if constexpr (kGated) {
        part[warp * kUpRows + R + gq] = c1[0];
        part[warp * kUpRows + R + gq + 8] = c1[2];
      }
    }
    ring.release(2 * g);
    // Every warp's partials of group g are written, and those of g - 1 (whose buffer g + 1 takes) read.
    bar_sync(1, kConsumerWarps * 32);
    float h = 0.0f;
    if (lane < rows) {
      float d0 = 0.0f, d1 = 0.0f;
      for (int w = 0; w < kConsumerWarps; ++w) {
        d0 += part[w * kUpRows + lane];
        if constexpr (kGated) d1 += part[w * kUpRows + R + lane];
      }
      h = kGated ? activate(p.act, d0) * d1 : activate(p.act, d0 + (bias ? to_f32(bias[f0 + lane]) : 0.0f));
    }
    const T ht = from_f32<T>(h);
    const unsigned bits = *reinterpret_cast<const uint16_t*>(&ht);
    auto h_of = [&](int j) { return __shfl_sync(0xffffffffu, bits, j); };
    const uint32_t b0 = h_of(2 * q) | h_of(2 * q + 1) << 16, b1 = h_of(2 * q + 8) | h_of(2 * q + 9) << 16;

    ring.wait(2 * g + 1);
    const unsigned char* down = slots + size_t((2 * g + 1) % bp.stages) * bp.stage_bytes;
#pragma unroll
    for (int i = 0; i < kMaxTiles; ++i) {
      const int tile = warp + i * kConsumerWarps;
      if (tile >= tiles) break;
      uint32_t a[4];
      ldmatrix_x4<true>(a, a_tile_row<true>(down + tile * 32, lane, stride));
      if (rows < R) {  // a[0], a[1]: features 2q, 2q + 1; a[2], a[3]: 2q + 8, 2q + 9
        a[0] = keep_halves(a[0], 2 * q < rows, 2 * q + 1 < rows);
        a[1] = keep_halves(a[1], 2 * q < rows, 2 * q + 1 < rows);
        a[2] = keep_halves(a[2], 2 * q + 8 < rows, 2 * q + 9 < rows);
        a[3] = keep_halves(a[3], 2 * q + 8 < rows, 2 * q + 9 < rows);
      }
      mma_16816<T>(acc[i], a, b0, b1);
    }
    ring.release(2 * g + 1);
  }
  // Lane (gq, 0) holds outputs gq and gq + 8 of each of its warp's tiles (columns 2q, 2q + 1 are equal).
#pragma unroll
  for (int i = 0; i < kMaxTiles; ++i) {
    const int tile = warp + i * kConsumerWarps;
    if (tile < tiles && q == 0) {
      out[tile * 16 + gq] = acc[i][0];
      out[tile * 16 + gq + 8] = acc[i][2];
    }
  }
}

template <typename T, bool kGated, bool kMma>
__global__ void __launch_bounds__(kThreads, 2) ffn_bulk_kernel(Params bp) {
  const FfnParams& p = bp.f;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem + bp.x_at);
  float* out = reinterpret_cast<float*>(smem + bp.out_at);  // the block's partial outputs [D]
  float* hs = reinterpret_cast<float*>(smem + bp.h_at);  // h of a group (mma: partial sums), two alternating
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
    const int rows = rows_of(i / 2);
    const unsigned bytes = unsigned(rows * row_bytes);
    if constexpr (kMma) {  // row by row, at bp.row_stride
      const bool up = i % 2 == 0;
      const char* src = (up ? W1 : W2) + f * row_bytes;
      mbar_arrive_expect(bar, kGated && up ? 2 * bytes : bytes);
      for (int r = 0; r < rows; ++r) {
        bulk_copy(dst + r * bp.row_stride, src + r * row_bytes, unsigned(row_bytes), bar);
        if (kGated && up)
          bulk_copy(dst + (R + r) * bp.row_stride, src + (F + r) * row_bytes, unsigned(row_bytes), bar);
      }
    } else if (i % 2 == 0) {
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
    if (producer) {
      const unsigned long long all_staged = arrive_staged(p.staged);
      for (int i = S; i < stages; ++i) ring.produce(i, fill);
      wait_staged(p, all_staged);
    }
  } else {
    const int t = threadIdx.x;
    if constexpr (kMma) {
      mma_consumers<T, kGated>(bp, ring, xs, out, hs, slots, f_begin, f_end);
    } else {
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
    }
  }
  __syncthreads();  // the partial outputs are complete, and every block has staged (the producer waited)
  add_to_residual(p, out);
}

// Blocks of at least this many bytes of weights take the bulk form. Decode step, H100, against the register
// form, same calls: GPT-2 XL (41 MB a block) 2.14 vs 2.31 ms, T5-3B (67 MB) 1.685 vs 1.710 ms
// (bench/results/gpu_bulk_regression_h100_2026-11-26.txt); GPT-2 large (26 MB) 1.336 vs 1.387, medium (16
// MiB) 0.758 vs 0.796, T5-large (16 MiB) 0.862 vs 0.876 (gpu_variants_h100_2026-11-26_fifth.txt). Below it,
// GPT-2 small (9.4 MB) was slower in bulk form, 0.322 vs 0.296 ms, but T5-base (also 9.4 MB) faster, 0.355 vs
// 0.363 (gpu_gemv_bulk_default_h100_2026-11-26.txt): the size is a proxy for a cause not yet understood.
constexpr size_t kMinBytes = size_t(16) << 20;

// On sm_90, for blocks of kMinBytes or more (KESTREL_FFN_BULK=1: any size, 0: never), where two stages fit
// the GPU's shared memory.
bool usable(int64_t D, int64_t F, size_t weight_bytes, bool gated, bool h_f32) {
  static const EnvSwitch mode = env_switch("KESTREL_FFN_BULK");
  if (mode == EnvSwitch::Off || !hopper_or_later()) return false;
  const size_t bytes = size_t(D) * size_t(F) * (gated ? 3 : 2) * weight_bytes;
  if (mode != EnvSwitch::On && bytes < kMinBytes) return false;
  return layout(D, weight_bytes, gated, mma_usable(D, weight_bytes, h_f32)).total <= max_shared_bytes();
}

template <typename T, bool kGated, bool kMma>
void launch_form(const FfnParams& p, cudaStream_t stream) {
  auto* kernel = ffn_bulk_kernel<T, kGated, kMma>;
  const Layout l = layout(p.D, sizeof(T), kGated, kMma);
  static std::atomic<size_t> allowed{0};
  allow_shared_memory(kernel, l.total, allowed, "ffn_bulk");
  // Every block must be resident at once (each waits for all to have staged: arrive_staged).
  int per_sm = 0;
  check(int(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, l.total)), "ffn_bulk");
  // (KESTREL_FFN_BLOCKS=n: n blocks, even more than that, as in the register form.)
  static const int64_t forced = env_int("KESTREL_FFN_BLOCKS");
  const int64_t blocks = forced > 0 ? std::min<int64_t>(forced, p.F)
                                    : std::clamp<int64_t>(std::min<int64_t>(sm_count(), p.F), 1,
                                                          int64_t(std::max(per_sm, 1)) * sm_count());
  Params bp{p,
            l.group,
            l.stages,
            unsigned(l.stage_bytes),
            unsigned(l.x_at),
            unsigned(l.out_at),
            unsigned(l.h_at),
            unsigned(l.ring_at),
            unsigned(l.row_stride)};
  launch_pdl(kernel, dim3(unsigned(blocks)), dim3(kThreads), l.total, stream, bp);
}

template <typename T, bool kGated>
void launch(const FfnParams& p, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    if (mma_usable(p.D, sizeof(T), p.h_f32)) return launch_form<T, kGated, true>(p, stream);
  }
  launch_form<T, kGated, false>(p, stream);
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
  if (!aligned16(a.W1) || !aligned16(a.W2t) || !aligned16(a.in.x))
    internal_error("ffn: operands not 16-byte aligned");
  if (!a.staged || !a.wait.fault) internal_error("ffn: no staged counter or fault flag");
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
              a.staged,
              a.wait};
  dispatch_dtype(a.wt, [&](auto w) {
    using T = decltype(w);
    if (bulk::usable(a.D, a.F, sizeof(T), a.gated, p.h_f32))
      a.gated ? bulk::launch<T, true>(p, stream) : bulk::launch<T, false>(p, stream);
    else
      a.gated ? launch<T, true>(p, stream) : launch<T, false>(p, stream);
  });
  check_launch("ffn");
}

}  // namespace kestrel::cuda
