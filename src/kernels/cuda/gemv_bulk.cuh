#pragma once
// The bulk-copy GEMV (gemv_bulk.cu) for gemv.cu's dispatcher: one input row, rows of at most 8 KiB of
// weights, non-gated, on sm_90 and later.
#include "kernels/cuda/ops.h"

namespace kestrel::cuda {

// True when gemv_bulk() takes a single-row linear with K inputs, N outputs and weights W of dtype wt: by
// default for 16-bit rows of 1,536 inputs or more whose block share fits its ring (KESTREL_GEMV_BULK=1:
// wherever it can, 0: never).
bool gemv_bulk_supported(int64_t K, int64_t N, DType wt, const void* W);

// The bulk-copy kernels (gemv_bulk.cu, ffn.cu): consumer warps a block and the bytes of its ring of stages.
// Against 4 and 8 warps and 96 KiB (H100, decode step, NOTES.md), 16 warps are what keeps up with the copies.
constexpr int kBulkConsumerWarps = 16;
constexpr size_t kBulkRingBytes = size_t(160) << 10;
// kBulkRingBytes, or KESTREL_BULK_RING_KB (the ring holds at least two stages whatever this says).
size_t bulk_ring_bytes();

// y[N] = act(in · Wᵀ + bias) (+= with residual) for one input row described by `in` (see LinearInput).
void gemv_bulk(const LinearInput& in, int64_t K, const void* W, DType wt, int64_t N, const void* bias,
               Act act, bool residual, void* y, DType yt, Stream stream,
               unsigned long long* argmax = nullptr);

}  // namespace kestrel::cuda
