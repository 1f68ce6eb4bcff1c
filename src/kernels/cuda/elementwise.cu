// Small memory-bound kernels: dtype conversion, embeddings, row gathers, KV-cache stores, greedy argmax, and
// the CUDA error checks every other file uses.
#include <string>

#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

void check(int cuda_error, const char* what) {
  if (cuda_error == cudaSuccess) return;
  const auto e = cudaError_t(cuda_error);
  if (e == cudaErrorMemoryAllocation)
    fail(std::string(what) + ": out of GPU memory (" + cudaGetErrorString(e) +
         "); lower --max-batch / --max-length, or use --device cpu");
  fail(std::string(what) + ": CUDA error " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

void check_launch(const char* kernel) {
  check(int(cudaGetLastError()), kernel);
}

size_t element_size(DType t) {
  if (t != DType::F32 && t != DType::F16 && t != DType::BF16)
    internal_error("CUDA kernels support F32, F16 and BF16, not " + std::string(dtype_name(t)));
  return dtype_size(t);
}

namespace {

template <typename S, typename D>
__global__ void convert_kernel(const S* src, D* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<D>(to_f32(src[i]));
}

template <typename T>
__global__ void embedding_kernel(const int32_t* ids, const int32_t* positions, const T* table,
                                 const T* pos_table, int64_t D, float* y) {
  const int64_t t = blockIdx.x;
  const T* row = table + int64_t(ids[t]) * D;
  const T* pos = pos_table ? pos_table + int64_t(positions[t]) * D : nullptr;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float v = to_f32(row[d]);
    if (pos) v += to_f32(pos[d]);
    y[t * D + d] = v;
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* x, const int32_t* src_rows, int64_t D, T* y) {
  const int64_t r = blockIdx.x;
  const T* src = x + int64_t(src_rows[r]) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) y[r * D + d] = src[d];
}

template <typename T>
__global__ void store_kv_kernel(const T* src, int64_t src_stride, int64_t k_offset, int64_t v_offset,
                                int64_t I, const int32_t* row, const int32_t* pos, const int32_t* phys,
                                int64_t max_len, T* cache_k, T* cache_v) {
  const int64_t t = blockIdx.x;
  const int64_t dst = (int64_t(phys[row[t]]) * max_len + pos[t]) * I;
  const T* s = src + t * src_stride;
  for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
    cache_k[dst + i] = s[k_offset + i];
    cache_v[dst + i] = s[v_offset + i];
  }
}

// One block per row: each thread scans a strided slice, then a (value, index) reduction keeps the larger
// value and, on ties, the smaller index.
__global__ void argmax_kernel(const float* logits, int64_t V, int32_t* ids) {
  const float* row = logits + int64_t(blockIdx.x) * V;
  float best = -INFINITY;
  int64_t best_i = V;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (v == best && i < best_i) || (best_i == V && v != v)) {
      best = v;
      best_i = i;
    }
  }
  __shared__ float sv[32];
  __shared__ int64_t si[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ov > best || (ov == best && oi < best_i)) {
      best = ov;
      best_i = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x >> 5); ++w)
      if (sv[w] > best || (sv[w] == best && si[w] < best_i)) {
        best = sv[w];
        best_i = si[w];
      }
    ids[blockIdx.x] = int32_t(best_i < V ? best_i : 0);
  }
}

}  // namespace

void convert(const void* src, DType src_t, void* dst, DType dst_t, int64_t n, Stream stream) {
  if (n == 0) return;
  dispatch_dtype(src_t, [&](auto s) {
    dispatch_dtype(dst_t, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(n, 256), 4096));
      convert_kernel<S, D><<<blocks, 256, 0, stream>>>(static_cast<const S*>(src), static_cast<D*>(dst), n);
    });
  });
  check_launch("convert");
}

void embedding(const int32_t* ids, const int32_t* positions, int64_t T, const void* table,
               const void* pos_table, DType table_t, int64_t D, float* y, Stream stream) {
  if (T == 0) return;
  dispatch_dtype(table_t, [&](auto z) {
    using E = decltype(z);
    embedding_kernel<E><<<unsigned(T), 256, 0, stream>>>(ids, positions, static_cast<const E*>(table),
                                                         static_cast<const E*>(pos_table), D, y);
  });
  check_launch("embedding");
}

void gather_rows(const void* x, const int32_t* src_rows, int64_t R, int64_t D, DType t, void* y,
                 Stream stream) {
  if (R == 0) return;
  dispatch_dtype(t, [&](auto z) {
    using E = decltype(z);
    gather_rows_kernel<E>
        <<<unsigned(R), 256, 0, stream>>>(static_cast<const E*>(x), src_rows, D, static_cast<E*>(y));
  });
  check_launch("gather_rows");
}

void store_kv(const void* src, int64_t src_stride, int64_t k_offset, int64_t v_offset, int64_t I, int64_t T,
              const int32_t* row, const int32_t* pos, const int32_t* phys, int64_t max_len, DType t,
              void* cache_k, void* cache_v, Stream stream) {
  if (T == 0) return;
  dispatch_dtype(t, [&](auto z) {
    using E = decltype(z);
    store_kv_kernel<E><<<unsigned(T), 128, 0, stream>>>(static_cast<const E*>(src), src_stride, k_offset,
                                                        v_offset, I, row, pos, phys, max_len,
                                                        static_cast<E*>(cache_k), static_cast<E*>(cache_v));
  });
  check_launch("store_kv");
}

void argmax_rows(const float* logits, int64_t R, int64_t V, int32_t* ids, Stream stream) {
  if (R == 0) return;
  argmax_kernel<<<unsigned(R), 1024, 0, stream>>>(logits, V, ids);
  check_launch("argmax_rows");
}

}  // namespace kestrel::cuda
