#pragma once
// Device helpers shared by the CUDA kernels: element loads/stores in fp32/fp16/bf16, warp reductions, the
// activations (the same definitions as kernels/cpu/activation.cpp) and dtype dispatch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

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

// The kVec<T> elements of a 16-byte load, widened to fp32.
template <typename T>
__device__ __forceinline__ void widen(const uint4& v, float (&out)[kVec<T>]) {
  const T* p = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) out[i] = to_f32(p[i]);
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

// Whether a pointer allows 16-byte vector loads (host side: which kernel a call can take).
inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Streaming multiprocessors of the current device (read once per device 0..15).
int sm_count();

// The integer value of environment variable `name` (the kernels' tuning and debugging knobs); 0 when it is
// unset or not a number.
int64_t env_int(const char* name);

inline unsigned blocks_for(int64_t n, int threads) {
  return unsigned((n + threads - 1) / threads);
}

}  // namespace kestrel::cuda
