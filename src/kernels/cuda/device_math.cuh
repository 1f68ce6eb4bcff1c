#pragma once
// Device helpers shared by the CUDA kernels: element loads/stores in fp32/fp16/bf16, warp reductions, the
// activations (the same definitions as kernels/cpu/activation.cpp) and dtype dispatch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "core/error.h"
#include "kernels/cuda/ops.h"

namespace kestrel::cuda {

__device__ __forceinline__ float to_f32(float x) {
  return x;
}
__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Elements of a compute dtype in one 16-byte load (the vector width of the GEMV, attention and step kernels).
template <typename T>
constexpr int kVec = 16 / int(sizeof(T));

// The kVec<T> elements of a 16-byte load, widened to fp32. The vector is copied whole and taken apart in
// registers: reading its elements through a T pointer let the compiler turn a vector in shared memory into
// eight 2-byte loads.
template <typename T>
__device__ __forceinline__ void widen(const uint4& v, float (&out)[kVec<T>]) {
  const uint4 r = v;
  const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kVec<T> == 4) {  // fp32
      out[i] = __uint_as_float(w[i]);
    } else if constexpr (std::is_same_v<T, __half>) {
      const float2 f = __half22float2(__halves2half2(__ushort_as_half((unsigned short)(w[i] & 0xffffu)),
                                                     __ushort_as_half((unsigned short)(w[i] >> 16))));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    } else {  // bf16: the upper half of an fp32
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long k) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, k, o);
    k = other > k ? other : k;
  }
  return k;
}

// *key = max(*key, k) across the grid. The plain read first skips the atomic (and its queue at one L2
// address, shared by every warp of the grid) when a larger key is already there, as it mostly is.
__device__ __forceinline__ void raise_argmax_key(unsigned long long* key, unsigned long long k) {
  if (k > *reinterpret_cast<volatile unsigned long long*>(key)) atomicMax(key, k);
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every thread gets the result. `shared`
// holds 32 floats and may be reused right after the call returns.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

// Asynchronous 16-byte copies from global into shared memory (cp.async, bypassing L1): issue, commit the
// group, and wait until at most N groups are still in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* global) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Bulk copies (the Tensor Memory Accelerator, sm_90): one thread moves a whole contiguous block of global
// memory into shared memory and the block's transaction barrier (mbarrier) counts the bytes in. A stage of a
// shared-memory ring is "full" when its barrier's phase completes, and "empty" when the warps reading it have
// arrived on another. Phases alternate parity: the k-th completion of a barrier is waited for with parity
// k & 1. Only compiled for sm_90 (callers check the GPU first: hopper_or_later()).
__device__ __forceinline__ unsigned smem_address(const void* p) {
  return unsigned(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned arrivals) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(arrivals) : "memory");
#endif
}
// Makes the initialised barriers visible to the async (bulk copy) proxy; then a __syncthreads().
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_address(bar)) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
#endif
}
// Arrives on `bar` (the producer's one arrival of a phase) and adds `bytes` to the transfers it waits for.
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
#endif
}
// Copies `bytes` from `src` to `dst` (both 16-byte aligned, bytes a multiple of 16) with one bulk copy whose
// completion is counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          smem_address(dst)),
      "l"(src), "r"(bytes), "r"(smem_address(bar))
      : "memory");
#endif
}

// A ring of `slots` stages in shared memory: one producer lane fills stage i (the i-th of a sequence) into
// slot i % slots with bulk copies, and `consumers` warps read it and release it. The producer calls start()
// once (before a __syncthreads() that the consumers also pass), then produce(i, fill) for the later stages in
// order, where fill(i, bar) issues stage i's copies on `bar` (mbar_arrive_expect, then bulk_copy).
struct BulkRing {
  uint64_t* full;
  uint64_t* empty;
  int slots, consumers;

  __device__ void init() const {
    for (int s = 0; s < slots; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], unsigned(consumers));
    }
    mbar_init_fence();
  }
  // Initialises the barriers and fills the first min(slots, stages) stages (nothing waits for a consumer).
  // Through fill() directly, not produce(): with produce()'s empty-slot wait compiled into this prologue
  // (never taken here) the bulk FFN's decode step measured 6 % slower on GPT-2 XL and T5-3B (H100,
  // bench/results/gpu_bulk_regression_h100_2026-11-26.txt).
  template <typename Fill>
  __device__ void start(int stages, Fill&& fill) const {
    init();
    for (int i = 0; i < min(slots, stages); ++i) fill(i, &full[i % slots]);
  }
  // Waits until every consumer has released stage i - slots (whose slot stage i takes), then fills it.
  template <typename Fill>
  __device__ void produce(int i, Fill&& fill) const {
    if (i >= slots) mbar_wait(&empty[i % slots], unsigned(i / slots - 1) & 1u);
    fill(i, &full[i % slots]);
  }
  // A consumer waits until stage i has arrived.
  __device__ void wait(int i) const { mbar_wait(&full[i % slots], unsigned(i / slots) & 1u); }
  // A consumer warp is done with stage i (every lane calls it).
  __device__ void release(int i) const {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(&empty[i % slots]);
  }
};

// Barrier among the first `threads` threads of the block only (named barrier `id`, 1-15; 0 is __syncthreads).
__device__ __forceinline__ void bar_sync(unsigned id, unsigned threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// p[0..3] += v with one vector atomic where the GPU has it (sm_90), four scalar ones elsewhere; p 16-byte
// aligned.
__device__ __forceinline__ void atomic_add4(float* p, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(p), v);
#else
  atomicAdd(p, v.x);
  atomicAdd(p + 1, v.y);
  atomicAdd(p + 2, v.z);
  atomicAdd(p + 3, v.w);
#endif
}

__device__ __forceinline__ float activate(Act act, float x) {
  switch (act) {
    case Act::Identity:
      return x;
    case Act::GeluTanh: {
      constexpr float k = 0.7978845608028654f;
      return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    case Act::GeluErf:
      return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case Act::QuickGelu:
      return x / (1.0f + expf(-1.702f * x));
    case Act::Relu:
      return x > 0.0f ? x : 0.0f;
    case Act::Silu:
      return x / (1.0f + expf(-x));
    case Act::Tanh:
      return tanhf(x);
    case Act::Sigmoid:
      return 1.0f / (1.0f + expf(-x));
  }
  return x;
}

// Calls f(T{}) with T the C++ type of a compute dtype.
template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F32:
      f(float{});
      return;
    case DType::F16:
      f(__half{});
      return;
    case DType::BF16:
      f(__nv_bfloat16{});
      return;
    default:
      internal_error("CUDA kernels support F32, F16 and BF16, not " + std::string(dtype_name(t)));
  }
}

// Calls f(T{}, TX{}, TY{}) for a linear layer: T the C++ type of the weights' dtype, TX and TY those of its
// input and output, each fp32 or T.
template <typename F>
void dispatch_linear_dtypes(DType wt, DType xt, DType yt, F&& f) {
  dispatch_dtype(wt, [&](auto w) {
    using T = decltype(w);
    auto with_x = [&](auto x) {
      if (yt == DType::F32)
        f(w, x, float{});
      else
        f(w, x, T{});
    };
    if (xt == DType::F32)
      with_x(float{});
    else
      with_x(T{});
  });
}

// Whether a pointer allows 16-byte vector loads (host side: which kernel a call can take).
inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Streaming multiprocessors of the current device (read once per device 0..15).
int sm_count();

// The most dynamic shared memory a block of the current device may opt in to (read once per device).
size_t max_shared_bytes();

inline unsigned blocks_for(int64_t n, int threads) {
  return unsigned((n + threads - 1) / threads);
}

}  // namespace kestrel::cuda
