// Greedy argmax as one 64-bit key a logit, so that a grid finds a row's argmax with atomicMax alone (ops.h:
// argmax_rows, gemv's `argmax`): the largest key over a row is the one of torch.argmax's pick. The logit's
// bits, made order-preserving as an unsigned integer, in the high half (every NaN above every number, -0
// equal to +0); the complement of the index in the low half (on ties the smaller index wins). Host and
// device, so that host tests check the order (kernels_argmax_key_test).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cuda/host_device.h"

namespace kestrel::cuda {

KESTREL_HOST_DEVICE inline unsigned long long argmax_key(float v, int64_t i) {
  unsigned u;
  if (v != v) {
    u = 0x7fffffffu;  // NaN, whatever its sign and payload: above +inf
  } else if (v == 0.0f) {
    u = 0u;  // -0 as +0
  } else {
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(v);
#else
    std::memcpy(&u, &v, sizeof u);
#endif
  }
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(u) << 32) | (0xffffffffu - static_cast<unsigned>(i));
}

// The index a key was made with.
KESTREL_HOST_DEVICE constexpr int32_t argmax_index(unsigned long long key) {
  return int32_t(0xffffffffu - unsigned(key & 0xffffffffu));
}

}  // namespace kestrel::cuda
