// Prompt (prefill / encoder) attention on tensor cores, for fp16 and bf16: a block takes 64 consecutive query
// tokens of one batch row and one head, and walks that row's keys in tiles of 64 that every query of the
// block shares (loaded into shared memory once), flash-attention style: S = Q·Kᵀ on tensor cores (WMMA, fp32
// accumulators), the masked, scaled (and T5-biased) online softmax in fp32 on the CUDA cores, then O += P·V
// on tensor cores with P rounded to the input dtype. O lives in shared memory in fp32, so the per-row
// rescaling of the online softmax is plain arithmetic there.
//
// Why: attention_rows_kernel gives every query token its own block, which re-reads all of its row's keys and
// values: a 1,024-token GPT-2 XL prompt moved ~3 GB a layer through L2 and took longer to its first token
// than one eager transformers forward (NOTES.md). Here each key and value is read once per 64 queries.
#include <mma.h>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"

namespace kestrel::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kQ = 64;  // queries a block
constexpr int kK = 64;  // keys a tile
constexpr int kWarps = kQ / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // 16-bit elements of padding a shared row (bank spread; WMMA needs ldm % 8 == 0)

template <int D>
struct TileLayout {                      // offsets in bytes into dynamic shared memory
  static constexpr int ld = D + kPad;    // Qs, Ks, Vs rows (16-bit elements)
  static constexpr int lds = kK + 4;     // S rows (floats)
  static constexpr int ldp = kK + kPad;  // P rows (16-bit elements)
  static constexpr int ldo = D + 4;      // O rows (floats)
  static constexpr size_t q = 0;
  static constexpr size_t k = q + size_t(kQ) * ld * 2;
  static constexpr size_t v = k + size_t(kK) * ld * 2;
  static constexpr size_t s = v + size_t(kK) * ld * 2;
  static constexpr size_t p = s + size_t(kQ) * lds * 4;
  static constexpr size_t o = p + size_t(kQ) * ldp * 2;
  static constexpr size_t bytes = o + size_t(kQ) * ldo * 4;
};

// Copies rows [r0, r0 + n) of a [*, stride] matrix (head columns at `col`) into a shared [64, ld] tile, zero
// rows past n.
template <typename T, int D>
__device__ void load_tile(const T* src, int64_t stride, int n, T* dst) {
  constexpr int kVecs = D * int(sizeof(T)) / 16;
  for (int i = threadIdx.x; i < 64 * kVecs; i += kThreads) {
    const int r = i / kVecs, c = i % kVecs;
    uint4 v{};
    if (r < n) v = *reinterpret_cast<const uint4*>(src + int64_t(r) * stride + c * (16 / int(sizeof(T))));
    *reinterpret_cast<uint4*>(dst + r * TileLayout<D>::ld + c * (16 / int(sizeof(T)))) = v;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_tc_kernel(AttentionArgs a) {
  using L = TileLayout<D>;
  extern __shared__ __align__(128) char smem[];
  T* qs = reinterpret_cast<T*>(smem + L::q);
  T* ks = reinterpret_cast<T*>(smem + L::k);
  T* vs = reinterpret_cast<T*>(smem + L::v);
  float* ss = reinterpret_cast<float*>(smem + L::s);
  T* ps = reinterpret_cast<T*>(smem + L::p);
  float* os = reinterpret_cast<float*>(smem + L::o);

  const int tile = blockIdx.x, h = blockIdx.y, row = blockIdx.z;
  const int q_count = a.q_count[row];
  const int q0 = tile * kQ;
  if (q0 >= q_count) return;
  const int nq = min(kQ, q_count - q0);
  const int t0 = a.q_base[row] + q0;  // first query token of the block
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // Keys this block can see: the row's, and with a causal mask none past its last query's position.
  int key_end = a.key_count[row];
  if (a.causal) key_end = min(key_end, a.tok_pos[t0 + nq - 1] + 1);
  const T* kb = static_cast<const T*>(a.k) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;
  const T* vb = static_cast<const T*>(a.v) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;

  load_tile<T, D>(static_cast<const T*>(a.q) + int64_t(t0) * a.q_stride + int64_t(h) * D, a.q_stride, nq, qs);
  for (int i = threadIdx.x; i < kQ * L::ldo; i += kThreads) os[i] = 0.0f;

  // Softmax bookkeeping: lane pair (2r, 2r + 1) of warp w owns query row 16w + r, each half of its columns.
  const int r = warp * 16 + lane / 2, half = lane & 1;
  const bool valid = r < nq;
  const int qpos = valid ? a.tok_pos[t0 + r] : 0;
  float m = -INFINITY, l = 0.0f;

  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
  __syncthreads();
  FragA qf[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(qf[kk], qs + warp * 16 * L::ld + kk * 16, L::ld);

  for (int k0 = 0; k0 < key_end; k0 += kK) {
    const int nk = min(kK, key_end - k0);
    load_tile<T, D>(kb + int64_t(k0) * a.kv_stride, a.kv_stride, nk, ks);
    load_tile<T, D>(vb + int64_t(k0) * a.kv_stride, a.kv_stride, nk, vs);
    __syncthreads();

    // S[16 rows of this warp, 64 keys] = Q · Kᵀ (K rows in shared memory are Kᵀ's columns).
#pragma unroll
    for (int n = 0; n < kK / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, ks + n * 16 * L::ld + kk * 16, L::ld);
        wmma::mma_sync(acc, qf[kk], kf, acc);
      }
      wmma::store_matrix_sync(ss + warp * 16 * L::lds + n * 16, acc, L::lds, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this tile's 64 columns of row r (32 a lane), P into shared memory, O rescaled.
    float* srow = ss + r * L::lds;
    float tile_max = -INFINITY;
    float s[kK / 2];
#pragma unroll
    for (int c = 0; c < kK / 2; ++c) {
      const int col = half * (kK / 2) + c, j = k0 + col;
      float v = -INFINITY;
      if (valid && col < nk && (!a.causal || j <= qpos)) {
        v = srow[col] * a.scale;
        if (a.bias_table) v += a.bias_table[int64_t(a.bucket[j - qpos + a.bucket_center]) * a.heads + h];
      }
      s[c] = v;
      tile_max = fmaxf(tile_max, v);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    const float correction = m_new == -INFINITY ? 1.0f : expf(m - m_new);  // 0 when m was -inf
    float sum = 0.0f;
    T* prow = ps + r * L::ldp;
#pragma unroll
    for (int c = 0; c < kK / 2; ++c) {
      const float p = s[c] == -INFINITY ? 0.0f : expf(s[c] - m_new);
      sum += p;
      prow[half * (kK / 2) + c] = from_f32<T>(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * correction + sum;
    m = m_new;
    float* orow = os + r * L::ldo;
    for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) orow[d] *= correction;
    __syncwarp();

    // O[16 rows, D] += P · V.
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, os + warp * 16 * L::ldo + n * 16, L::ldo, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kK / 16; ++kk) {
        FragA pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, ps + warp * 16 * L::ldp + kk * 16, L::ldp);
        wmma::load_matrix_sync(vf, vs + kk * 16 * L::ld + n * 16, L::ld);
        wmma::mma_sync(acc, pf, vf, acc);
      }
      wmma::store_matrix_sync(os + warp * 16 * L::ldo + n * 16, acc, L::ldo, wmma::mem_row_major);
    }
    __syncthreads();  // the next tile overwrites K and V
  }

  if (!valid) return;
  T* out = static_cast<T*>(a.out) + int64_t(t0 + r) * a.out_stride + int64_t(h) * D;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const float* orow = os + r * L::ldo;
  for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) out[d] = from_f32<T>(orow[d] * inv);
}

template <typename T, int D>
void launch(const AttentionArgs& a, cudaStream_t stream) {
  constexpr size_t smem = TileLayout<D>::bytes;
  static std::atomic<size_t> allowed{0};
  allow_shared_memory(attention_tc_kernel<T, D>, smem, allowed, "prompt attention");
  const dim3 grid(unsigned((a.max_queries + kQ - 1) / kQ), unsigned(a.heads), unsigned(a.rows));
  attention_tc_kernel<T, D><<<grid, kThreads, smem, stream>>>(a);
}

}  // namespace

bool attention_tc(const AttentionArgs& a, Stream stream) {
  const bool sixteen_bit = a.dtype == DType::F16 || a.dtype == DType::BF16;
  const int D = a.head_dim;
  if (!sixteen_bit || !a.q_base || !a.q_count || a.rows < 1 || a.max_queries < 1 || a.fresh ||
      a.splits != 1 || (D != 16 && D != 32 && D != 64 && D != 128))
    return false;
  // 16-byte loads of every head row.
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || (a.q_stride * 2) % 16 ||
      (a.kv_stride * 2) % 16)
    return false;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    switch (D) {
      case 16:
        launch<T, 16>(a, stream);
        break;
      case 32:
        launch<T, 32>(a, stream);
        break;
      case 64:
        launch<T, 64>(a, stream);
        break;
      default:
        launch<T, 128>(a, stream);
        break;
    }
  };
  if (a.dtype == DType::F16)
    go(__half{});
  else
    go(__nv_bfloat16{});
  check_launch("attention (tensor cores)");
  return true;
}

}  // namespace kestrel::cuda
