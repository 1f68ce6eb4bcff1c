// Small memory-bound kernels: dtype conversion, embeddings, row gathers, KV-cache stores, greedy argmax, and
// the CUDA error checks every other file uses.
#include <string>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"

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

bool hopper_or_later() {
  static int major[16] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 16) return false;
  if (major[device] == 0 &&
      cudaDeviceGetAttribute(&major[device], cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return false;
  return major[device] >= 9;
}

bool pdl_supported() {
  // KESTREL_NO_PDL=1 turns it off (to measure what it buys, or to rule it out).
  static const bool disabled = env_flag("KESTREL_NO_PDL");
  return !disabled && hopper_or_later();
}

// A device attribute of the current device, read once per device 0..15.
static int device_attribute(cudaDeviceAttr attribute, int (&cache)[16], const char* what) {
  int device = 0;
  check(int(cudaGetDevice(&device)), "cudaGetDevice");
  if (device < 0 || device >= 16) internal_error("CUDA device index out of range");
  if (cache[device] == 0) check(int(cudaDeviceGetAttribute(&cache[device], attribute, device)), what);
  return cache[device];
}

int sm_count() {
  static int count[16] = {};
  return device_attribute(cudaDevAttrMultiProcessorCount, count, "reading the SM count");
}

size_t max_shared_bytes() {
  static int bytes[16] = {};
  return size_t(
      device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes, "reading the shared memory size"));
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

// dst[c * ld + r] = src[r * C + c]: a [R, C] block transposed through a 32 x 33 shared tile (the padding
// keeps the column reads free of bank conflicts).
template <typename S, typename D>
__global__ void convert_transposed_kernel(const S* src, int64_t R, int64_t C, D* dst, int64_t ld) {
  __shared__ float tile[32][33];
  const int64_t r0 = int64_t(blockIdx.y) * 32, c0 = int64_t(blockIdx.x) * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < R && c < C) tile[i][threadIdx.x] = to_f32(src[r * C + c]);
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;
    if (r < R && c < C) dst[c * ld + r] = from_f32<D>(tile[threadIdx.x][i]);
  }
}

template <typename T>
__global__ void embedding_kernel(const int32_t* ids, const int32_t* positions, const T* table,
                                 const T* pos_table, int64_t D, float* y) {
  pdl_wait();  // y may still be read by the previous step's last kernel
  pdl_trigger();
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

// Greedy argmax: kArgmaxSlices blocks a row each reduce a slice of it to one key (argmax_key) and raise the
// row's key with it. The keys start at zero (the session's token upload clears them), so one kernel does it.
__global__ void argmax_slices_kernel(const float* logits, int64_t V, unsigned long long* keys) {
  pdl_wait();
  pdl_trigger();
  const float* row = logits + int64_t(blockIdx.x) * V;
  const int64_t per = (V + gridDim.y - 1) / gridDim.y;
  const int64_t begin = int64_t(blockIdx.y) * per, end = min(V, begin + per);
  unsigned long long best = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const unsigned long long k = argmax_key(row[i], i);
    best = k > best ? k : best;
  }
  best = warp_max_u64(best);
  __shared__ unsigned long long s[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) s[warp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x >> 5); ++w) best = s[w] > best ? s[w] : best;
    raise_argmax_key(keys + blockIdx.x, best);
  }
}

__global__ void advance_greedy_kernel(unsigned long long* keys, int R, int32_t* ids, int32_t* positions,
                                      int32_t* key_counts) {
  const int r = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (r >= R) return;
  ids[r] = argmax_index(keys[r]);
  positions[r] += 1;
  key_counts[r] += 1;
  keys[r] = 0;
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

void convert_transposed(const void* src, DType src_t, int64_t R, int64_t C, void* dst, DType dst_t,
                        int64_t ld, Stream stream) {
  if (R == 0 || C == 0) return;
  if ((R + 31) / 32 > 65535) internal_error("convert_transposed: more than 2M rows in one call");
  dispatch_dtype(src_t, [&](auto s) {
    dispatch_dtype(dst_t, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      const dim3 grid(unsigned((C + 31) / 32), unsigned((R + 31) / 32));
      convert_transposed_kernel<S, D>
          <<<grid, dim3(32, 8), 0, stream>>>(static_cast<const S*>(src), R, C, static_cast<D*>(dst), ld);
    });
  });
  check_launch("convert_transposed");
}

void embedding(const int32_t* ids, const int32_t* positions, int64_t T, const void* table,
               const void* pos_table, DType table_t, int64_t D, float* y, Stream stream) {
  if (T == 0) return;
  dispatch_dtype(table_t, [&](auto z) {
    using E = decltype(z);
    launch_pdl(embedding_kernel<E>, dim3(unsigned(T)), dim3(256), 0, stream, ids, positions,
               static_cast<const E*>(table), static_cast<const E*>(pos_table), D, y);
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

void argmax_rows(const float* logits, int64_t R, int64_t V, unsigned long long* keys, Stream stream) {
  if (R == 0) return;
  if (V < 1 || V > int64_t(0x7fffffff)) internal_error("argmax_rows: bad vocabulary size");
  const unsigned slices = unsigned(std::min<int64_t>(kArgmaxSlices, (V + 1023) / 1024));
  launch_pdl(argmax_slices_kernel, dim3(unsigned(R), slices), dim3(256), 0, stream, logits, V, keys);
  check_launch("argmax_rows");
}

void advance_greedy(unsigned long long* keys, int64_t R, int32_t* ids, int32_t* positions,
                    int32_t* key_counts, Stream stream) {
  if (R == 0) return;
  if (R > 1024) internal_error("advance_greedy: more than 1024 rows");
  // A plain launch: the step's first kernel starts after it (under programmatic dependent launch too, since
  // this kernel never triggers its dependents early).
  advance_greedy_kernel<<<1, unsigned(R), 0, stream>>>(keys, int(R), ids, positions, key_counts);
  check_launch("advance_greedy");
}

}  // namespace kestrel::cuda
