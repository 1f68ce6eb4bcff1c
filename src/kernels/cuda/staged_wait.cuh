#pragma once
// Blocks of one kernel that wait for each other through a counter in global memory (staged_count.h has the
// arithmetic): the one-row FFN kernels (every block has read the residual row before any adds into it) and
// attention with its QKV GEMV fused in (a head's blocks have all written its query, key and value; every
// block has read the residual row). Every block of such a grid must be resident at once; the launches check
// that with the occupancy calculator. Where the GPU gives a kernel fewer SMs than it reports (MPS with an
// active-thread percentage below 100), blocks could wait for blocks that cannot start: a wait gives up after
// wait_ns, sets the fault flag (mapped host memory) that the session checks after each step, and lets the
// block finish, with results the session then refuses, so it fails with an error instead of hanging.
#include "kernels/cuda/staged_count.h"

namespace kestrel::cuda {

struct BlockWait {
  unsigned* fault = nullptr;  // set to 1 by a wait that gave up
  unsigned long long wait_ns = 10'000'000'000ull;
};

#if defined(__CUDACC__)
// Block `block` of the `blocks` that count on `counter` in this call arrives (one thread; release: what the
// block wrote before, after a __syncthreads(), is visible to whoever sees the count). Returns the count at
// which all of them have arrived.
__device__ __forceinline__ unsigned long long arrive(unsigned long long* counter, unsigned block,
                                                     unsigned blocks) {
  unsigned long long before;
  asm volatile("atom.release.gpu.global.add.u64 %0, [%1], %2;"
               : "=l"(before)
               : "l"(counter), "l"(staged::add(block, blocks))
               : "memory");
  return staged::target(before);
}

__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Until *counter reaches target (acquire: then what the arrived blocks wrote is visible), or gives up after
// w.wait_ns and sets the fault flag. One thread calls it; a __syncthreads() after passes it on to the block.
__device__ __forceinline__ void wait_until(const unsigned long long* counter, unsigned long long target,
                                           const BlockWait& w) {
  if (load_acquire(counter) >= target) return;
  const unsigned long long start = global_ns();
  while (load_acquire(counter) < target) {
    if (global_ns() - start > w.wait_ns) {
      *reinterpret_cast<volatile unsigned*>(w.fault) = 1u;
      return;
    }
  }
}
#endif

}  // namespace kestrel::cuda
