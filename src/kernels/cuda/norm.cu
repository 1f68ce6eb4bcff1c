// LayerNorm and RMSNorm, one block per row. Statistics are two-pass in fp32 (mean first, then the centred sum
// of squares) so fp32 results match the CPU reference to rounding; the row is re-read from L1/L2, not HBM.
#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

namespace {

template <typename TX, typename TY>
__global__ void norm_kernel(const TX* x, int64_t D, const float* gamma, const float* beta, bool rms,
                            float eps, float out_scale, TY* y) {
  __shared__ float shared[32];
  const TX* row = x + int64_t(blockIdx.x) * D;
  float mean = 0.0f;
  if (!rms) {
    float s = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += to_f32(row[d]);
    mean = block_sum(s, shared) / float(D);
  }
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float c = to_f32(row[d]) - mean;
    ss += c * c;
  }
  const float inv = rsqrtf(block_sum(ss, shared) / float(D) + eps);
  // All threads have read the whole row before any writes: x may equal y.
  __syncthreads();
  TY* out = y + int64_t(blockIdx.x) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float v = (to_f32(row[d]) - mean) * inv * gamma[d];
    if (beta) v += beta[d];
    out[d] = from_f32<TY>(v * out_scale);
  }
}

}  // namespace

void norm(const void* x, DType xt, int64_t M, int64_t D, const float* gamma, const float* beta, bool rms,
          float eps, float out_scale, void* y, DType yt, Stream stream) {
  if (M == 0) return;
  const int threads = D >= 1024 ? 512 : D >= 256 ? 256 : 128;
  dispatch_dtype(xt, [&](auto a) {
    dispatch_dtype(yt, [&](auto b) {
      using TX = decltype(a);
      using TY = decltype(b);
      norm_kernel<TX, TY><<<unsigned(M), threads, 0, stream>>>(static_cast<const TX*>(x), D, gamma, beta, rms,
                                                               eps, out_scale, static_cast<TY*>(y));
    });
  });
  check_launch("norm");
}

}  // namespace kestrel::cuda
