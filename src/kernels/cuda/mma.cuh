// Warp-level tensor-core primitives (sm_80+ PTX) for the one-row kernels: a 16 × 16 tile of 16-bit weights
// loaded from shared memory in the register layout of mma.m16n8k16's A operand, and the multiply-accumulate
// itself with fp32 accumulators. Products of 16-bit values are exact in fp32 and the sums are kept in fp32,
// as the kernels' FMA loops do; only the order of the additions differs.
//
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), for lane l with g = l / 4, q = l % 4:
//   A (16 × 16, row-major): a[0] = (row g, cols 2q, 2q+1), a[1] = (row g+8, the same cols),
//                           a[2] = (row g, cols 2q+8, 2q+9), a[3] = (row g+8, cols 2q+8, 2q+9)
//   B (16 × 8):             b[0] = (rows 2q, 2q+1, col g), b[1] = (rows 2q+8, 2q+9, col g)
//   C (16 × 8, fp32):       c[0], c[1] = (row g, cols 2q, 2q+1), c[2], c[3] = (row g+8, the same cols)
// The lower 16 bits of a register hold the element with the lower column (A) or row (B) index.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

// Four 8 × 8 matrices of 16-bit elements from shared memory; lane l gives the address of row l % 8 of matrix
// l / 8 (16 contiguous bytes). With kTrans each matrix arrives transposed, so a tile stored column by column
// (A[m][k] at k * stride + m) lands in the same A layout as a row-major one. Ordered after prior memory
// operations (the mbarrier wait that says the tile has arrived).
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row))
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row))
                 : "memory");
}

// The address lane `lane` passes to ldmatrix_x4<kTrans> for a 16 × 16 A tile at `base` whose memory rows are
// `stride` bytes apart: rows of A (k contiguous) for a plain load, columns of A (m contiguous, A[m][k] at
// base + k * stride + 2m) for a transposed one. Matrices 0-3 are A's (rows 0-7, cols 0-7), (rows 8-15,
// cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15): a[0..3] above.
template <bool kTrans>
__device__ __forceinline__ const unsigned char* a_tile_row(const unsigned char* base, int lane, int stride) {
  const int i = lane & 7, matrix = lane >> 3;
  const int m = (matrix & 1) * 8, k = (matrix >> 1) * 8;
  return kTrans ? base + (k + i) * stride + m * 2 : base + (m + i) * stride + k * 2;
}

// c += A · B in fp32, A and B of 16-bit T (__half or __nv_bfloat16).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(sizeof(T) == 2, "mma_16816 takes 16-bit operands");
  if constexpr (std::is_same_v<T, __half>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Keeps the lower / upper 16-bit half of v only where keep_lo / keep_hi (zeroes the others).
__device__ __forceinline__ uint32_t keep_halves(uint32_t v, bool keep_lo, bool keep_hi) {
  return v & ((keep_lo ? 0x0000ffffu : 0u) | (keep_hi ? 0xffff0000u : 0u));
}

}  // namespace kestrel::cuda
