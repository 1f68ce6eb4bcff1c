#pragma once
// Programmatic dependent launch (PDL, Hopper and newer): a kernel launched with `launch_pdl` may start while
// the kernel before it on the stream is still finishing. It must call pdl_wait() before it touches anything
// an earlier kernel writes (activations, caches, logits) and may do only work on immutable data (weights,
// token metadata uploaded before the launch) ahead of that: decode GEMVs issue their first weight loads
// there, which hides most of the gap between two dependent kernels. pdl_trigger() lets the next kernel be
// scheduled onto SMs this one leaves idle. On GPUs or builds without PDL both are no-ops and launches are
// ordinary.
#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <utility>

#include "core/env.h"
#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// True when the current device runs PDL (compute capability 9.0+); read once per process and device 0..15.
bool pdl_supported();

// True when the current device has compute capability 9.0 or later (bulk copies, PDL); read once per device.
bool hopper_or_later();

// Lets `kernel` use `bytes` of dynamic shared memory. `allowed` is the caller's record of what the kernel is
// allowed so far (a static beside the launch), so the attribute is set only when a launch needs more;
// sessions on several threads may get here at once, hence the atomic and the lock around raising it.
template <typename... KArgs>
void allow_shared_memory(void (*kernel)(KArgs...), size_t bytes, std::atomic<size_t>& allowed,
                         const char* what) {
  if (bytes <= allowed.load(std::memory_order_acquire)) return;
  static std::mutex raising;
  const std::lock_guard<std::mutex> lock(raising);
  if (bytes <= allowed.load(std::memory_order_relaxed)) return;
  check(int(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes))), what);
  allowed.store(bytes, std::memory_order_release);
}

// kernel<<<grid, block, smem, stream>>>(args...) through cudaLaunchKernelEx, with `attribute` when it is
// given; `what` names the launch in the error.
template <typename... KArgs, typename... Args>
void launch_ex(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
               const cudaLaunchAttribute* attribute, const char* what, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[1];
  if (attribute) attributes[0] = *attribute;
  config.attrs = attributes;
  config.numAttrs = attribute ? 1 : 0;
  check(int(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...)), what);
}

// kernel<<<grid, block, smem, stream>>>(args...) with the programmatic-serialization attribute where
// supported.
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                Args&&... args) {
  // KESTREL_CARVEOUT=percent: every kernel's preferred shared-memory carve-out (experiments: kernels that
  // prefer different carve-outs cannot share an SM, so the next kernel's blocks wait for the SM to drain)
  static const int64_t carveout = env_int("KESTREL_CARVEOUT");
  if (carveout > 0)
    cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(carveout));
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  launch_ex(kernel, grid, block, smem, stream, pdl_supported() ? &attribute : nullptr, "kernel launch",
            std::forward<Args>(args)...);
}

}  // namespace kestrel::cuda
