// Single-row GEMV whose weights arrive by bulk copy (sm_90's Tensor Memory Accelerator) into a ring of
// shared-memory stages, for decode-step linear layers. The default only where it measured faster than
// gemv.cu's register GEMV (gemv_bulk_supported(): GPT-2 XL's QKV); KESTREL_GEMV_BULK=1 everywhere it can,
// 0 never. ffn.cu's bulk form, built the same way, is the default for large feed-forward blocks.
//
// Why: gemv.cu's warps load weights into registers, so what a block has in flight is bounded by its
// registers, and its blocks fill the SM: the next kernel cannot become resident until they end, and the
// hand-over between two dependent kernels leaves the memory idle for microseconds. Here one block an SM owns
// a contiguous range of output rows, which are contiguous in memory, and one producer thread copies them
// stage by stage (a row for each consumer warp, one instruction a stage) into a ring of bulk_ring_bytes(), so
// what is in flight is bounded by shared memory. The whole ring is requested before pdl_wait(): weights never
// change.
//
// The block stages the input row (gathered, normalised, rounded to the weight dtype, as gemv.cu does) once;
// then each consumer warp dots its row of a stage with it from shared memory and writes the output feature
// (bias, activation, residual as in gemv.cu). Every output is one warp's fixed-order sum: the result does not
// depend on timing.
#include <algorithm>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/gemv_bulk.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/row_input.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kConsumerWarps = kBulkConsumerWarps;
constexpr int kThreads = (kConsumerWarps + 1) * 32;  // and one more warp, whose first lane produces
constexpr int kMaxStages = 8;
constexpr int kStageRegs = 16;  // input rows of up to 16 * kThreads elements are normalised from registers
constexpr size_t kBarrierBytes = 2 * kMaxStages * sizeof(uint64_t);
constexpr int64_t kMinDefaultK = 1536;  // gemv_bulk_supported()

struct BulkParams {
  RowInput in;    // one row of K elements
  const void* W;  // [N, K]
  int64_t N;
  const void* bias;  // [N] in the output dtype, or null
  Act act;
  bool residual;
  void* y;
  unsigned long long* argmax;  // the row's argmax key, raised with the outputs' (gemv's `argmax`), or null
  int rows_per_stage, stages;
  unsigned row_bytes;
};

__host__ __device__ constexpr size_t staged_row_bytes(int64_t K, size_t weight_bytes) {
  return (size_t(K) * weight_bytes + 15) / 16 * 16;
}

// Shared memory: full[kMaxStages] and empty[kMaxStages] barriers, the staged input row, the ring.
template <typename T, typename TX, typename TY>
__global__ void __launch_bounds__(kThreads, 2) gemv_bulk_kernel(BulkParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t K = p.in.K, N = p.N;
  T* xs = reinterpret_cast<T*>(smem + kBarrierBytes);
  unsigned char* slots = smem + kBarrierBytes + staged_row_bytes(K, sizeof(T));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int R = p.rows_per_stage, S = p.stages;
  const BulkRing ring{reinterpret_cast<uint64_t*>(smem), reinterpret_cast<uint64_t*>(smem) + kMaxStages, S,
                      kConsumerWarps};
  const size_t row_bytes = p.row_bytes, stage_bytes = size_t(R) * row_bytes;
  // This block's rows [r_begin, r_end): the N rows split as evenly as the grid allows.
  const int64_t r_begin = N * blockIdx.x / gridDim.x, r_end = N * (blockIdx.x + 1) / gridDim.x;
  const int stages = int((r_end - r_begin + R - 1) / R);
  const char* weights = static_cast<const char*>(p.W);
  auto fill = [&](int i, uint64_t* bar) {  // stage i: R rows from r_begin + i R
    const int64_t r = r_begin + int64_t(i) * R;
    const unsigned bytes = unsigned(std::min<int64_t>(R, r_end - r) * int64_t(row_bytes));
    mbar_arrive_expect(bar, bytes);
    bulk_copy(slots + size_t(i % S) * stage_bytes, weights + r * int64_t(row_bytes), bytes, bar);
  };
  const bool producer = warp == kConsumerWarps && lane == 0;
  if (producer) ring.start(stages, fill);  // the weights' first stages before the previous kernel ends
  pdl_wait();
  pdl_trigger();
  stage_rows<T, TX, 1, kThreads, kStageRegs>(p.in, xs);  // ends with __syncthreads(): barriers visible too

  if (warp == kConsumerWarps) {
    if (producer)
      for (int i = S; i < stages; ++i) ring.produce(i, fill);
    return;
  }
  const int64_t nvec = K / kVec<T>;
  const uint4* xv = reinterpret_cast<const uint4*>(xs);
  TY* y = static_cast<TY*>(p.y);
  const TY* bias = static_cast<const TY*>(p.bias);
  unsigned long long best = 0;  // lane 0: the largest argmax key of the warp's outputs (p.argmax)
  for (int i = 0; i < stages; ++i) {
    ring.wait(i);
    const int64_t r0 = r_begin + int64_t(i) * R;
    const int rows = int(std::min<int64_t>(R, r_end - r0));
    const uint4* stage = reinterpret_cast<const uint4*>(slots + size_t(i % S) * stage_bytes);
    for (int j = warp; j < rows; j += kConsumerWarps) {
      const uint4* w = stage + int64_t(j) * nvec;
      float acc = warp_sum(dot_row<T>(w, xv, nvec));
      if (lane == 0) {
        const int64_t n = r0 + j;
        float out = activate(p.act, acc + (bias ? to_f32(bias[n]) : 0.0f));
        if (p.residual) out += to_f32(y[n]);
        const TY r = from_f32<TY>(out);
        y[n] = r;
        if (p.argmax) best = max(best, argmax_key(to_f32(r), n));
      }
    }
    ring.release(i);
  }
  if (p.argmax && lane == 0) raise_argmax_key(p.argmax, best);
}

struct Plan {
  int rows_per_stage, stages;
  size_t smem;
};

Plan plan(int64_t K, size_t weight_bytes) {
  const size_t row_bytes = size_t(K) * weight_bytes;
  const int R = kConsumerWarps;  // a row for every consumer warp
  const int S = int(std::clamp<size_t>(bulk_ring_bytes() / (size_t(R) * row_bytes), 2, kMaxStages));
  return {R, S, kBarrierBytes + staged_row_bytes(K, weight_bytes) + size_t(S) * size_t(R) * row_bytes};
}

template <typename T, typename TX, typename TY>
void launch(const BulkParams& base, cudaStream_t stream) {
  auto* kernel = gemv_bulk_kernel<T, TX, TY>;
  BulkParams p = base;
  const Plan pl = plan(p.in.K, sizeof(T));
  p.rows_per_stage = pl.rows_per_stage;
  p.stages = pl.stages;
  p.row_bytes = unsigned(size_t(p.in.K) * sizeof(T));
  static std::atomic<size_t> allowed{0};
  allow_shared_memory(kernel, pl.smem, allowed, "gemv_bulk");
  const int64_t blocks = std::min<int64_t>(sm_count(), (p.N + pl.rows_per_stage - 1) / pl.rows_per_stage);
  launch_pdl(kernel, dim3(unsigned(blocks)), dim3(kThreads), pl.smem, stream, p);
}

}  // namespace

size_t bulk_ring_bytes() {
  static const size_t bytes = [] {  // KESTREL_BULK_RING_KB overrides kBulkRingBytes (tuning experiments)
    const int64_t kb = env_int("KESTREL_BULK_RING_KB");
    return kb > 0 ? size_t(kb) << 10 : kBulkRingBytes;
  }();
  return bytes;
}

bool gemv_bulk_supported(int64_t K, int64_t N, DType wt, const void* W) {
  static const EnvSwitch mode = env_switch("KESTREL_GEMV_BULK");
  if (mode == EnvSwitch::Off || !hopper_or_later()) return false;
  if (wt != DType::F32 && wt != DType::F16 && wt != DType::BF16) return false;
  const size_t row_bytes = size_t(K) * dtype_size(wt);
  if (K <= 0 || N <= 0 || row_bytes % 16 != 0 || !aligned16(W)) return false;
  const Plan pl = plan(K, dtype_size(wt));
  if (pl.smem > max_shared_bytes()) return false;
  if (mode == EnvSwitch::On) return true;
  // By default only for 16-bit rows of at least kMinDefaultK inputs whose block share fits the ring (all of
  // it requested before pdl_wait()). Decode step, H100, same calls, every GEMV that fits in bulk form against
  // none (bench/results/gpu_gemv_bulk_default_h100_2026-11-26.txt): GPT-2 XL (K = 1600: QKV) 1.915-1.932 ms
  // against 1.982-1.988, but GPT-2 small (K = 768) 0.338 against 0.294, T5-large (K = 1024) 0.816-0.820
  // against 0.752-0.756 and T5-3B (K = 1024: its cross-attention query; its QKV does not fit) 1.665-1.685
  // against 1.597-1.607. Why the row length decides is not understood yet (sizes between are not measured).
  const int64_t rows = (N + sm_count() - 1) / sm_count();
  return K >= kMinDefaultK && dtype_size(wt) == 2 &&
         (rows + pl.rows_per_stage - 1) / pl.rows_per_stage <= pl.stages;
}

void gemv_bulk(const LinearInput& in, int64_t K, const void* W, DType wt, int64_t N, const void* bias,
               Act act, bool residual, void* y, DType yt, Stream stream, unsigned long long* argmax) {
  if (!gemv_bulk_supported(K, N, wt, W)) internal_error("gemv_bulk: unsupported shape or GPU");
  BulkParams p{RowInput{in.x, in.rows, in.gamma, in.beta, in.rms, in.eps, in.out_scale, 1, K},
               W,
               N,
               bias,
               act,
               residual,
               y,
               argmax,
               0,
               0,
               0};
  dispatch_linear_dtypes(wt, in.xt, yt, [&](auto w, auto x, auto y) {
    launch<decltype(w), decltype(x), decltype(y)>(p, stream);
  });
  check_launch("gemv_bulk");
}

}  // namespace kestrel::cuda
