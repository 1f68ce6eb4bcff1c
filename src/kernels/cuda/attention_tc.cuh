#pragma once
// Tensor-core prompt attention (attention_tc.cu), used by attention() when it can take the call.
#include "kernels/cuda/ops.h"

namespace kestrel::cuda {

// Runs `a` on tensor cores and returns true when it is a prompt pass (q_base / q_count given, no fused KV
// store, one split) in fp16 or bf16 with a head size of 16, 32, 64 or 128 and 16-byte aligned rows; otherwise
// returns false and enqueues nothing.
bool attention_tc(const AttentionArgs& a, Stream stream);

}  // namespace kestrel::cuda
