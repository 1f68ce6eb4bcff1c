// The arithmetic of the one-row FFN kernels' staged counter (ffn.cu, arrive_staged / wait_staged), on its own
// so that host tests can check it. Every block of a call reads the residual row while staging its input and
// adds into it at the end, so none may add before all have staged. One 64-bit counter, shared by calls that
// run one after another, tells: each call adds exactly kPerCall to it, block 0 kPerCall - (blocks - 1) and
// every other block 1. Whatever the order of arrival, the count a block sees before its own add lies in
// [start, start + kPerCall), so it rounds down to the call's start and every block has arrived when the count
// reaches target(before) = start + kPerCall: any grid size below kPerCall, no reset between calls, and 2^44
// calls before the counter wraps.
#pragma once

#include "kernels/cuda/host_device.h"

namespace kestrel::cuda::staged {

constexpr unsigned long long kPerCall = 1ull << 20;

// What block `block` of a call's `blocks` (fewer than kPerCall) adds when it has staged.
KESTREL_HOST_DEVICE constexpr unsigned long long add(unsigned block, unsigned blocks) {
  return block == 0 ? kPerCall - (blocks - 1) : 1;
}

// The count at which every block of the call has staged, from the count a block saw before its own add.
KESTREL_HOST_DEVICE constexpr unsigned long long target(unsigned long long before) {
  return (before / kPerCall + 1) * kPerCall;
}

}  // namespace kestrel::cuda::staged
