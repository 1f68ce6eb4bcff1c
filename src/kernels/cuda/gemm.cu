// Linear layers. Two paths, chosen by the number of rows:
//  - up to kGemvMaxRows rows (decode): the hand-written GEMV of gemv.cu.
//  - more rows (prompts, encoder): cuBLASLt, y = W·x in its column-major terms (TN), with the bias, bias+GELU
//    or bias+ReLU epilogue fused and the residual add folded in as beta = 1. Activations cuBLASLt lacks run
//    as a separate element-wise pass. fp32 uses CUBLAS_COMPUTE_32F, never TF32, so it matches fp32
//    references. Algorithms are chosen by measurement: the first GEMM of each (rows rounded up to a power of
//    two, N, K, dtypes, epilogue) times the heuristic's top candidates on its real inputs and the session
//    keeps the fastest (Impl::choose).
#include <cublasLt.h>

#include <map>
#include <string>
#include <tuple>

#include "kernels/cuda/device_math.cuh"

namespace kestrel::cuda {

namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail(std::string(what) + ": cuBLASLt error " + std::to_string(int(s)) +
         (s == CUBLAS_STATUS_NOT_SUPPORTED
              ? " (not supported on this GPU; try --precision fp32 or --device cpu)"
              : ""));
}

cudaDataType_t blas_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      internal_error("cuBLASLt: unsupported dtype " + std::string(dtype_name(t)));
  }
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr size_t kTuningBytes = size_t(32) << 20;  // largest GEMM output whose algorithm is chosen by timing
constexpr int kTuningCandidates = 8;
// --- element-wise epilogues cuBLASLt lacks
// ---------------------------------------------------------------------

template <typename TY>
__global__ void activation_kernel(TY* y, int64_t n, Act act) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<TY>(activate(act, to_f32(y[i])));
}

// y[m, f] (+)= act(h[m, f]) * h[m, F + f] for an fp32 h of [M, 2F].
template <typename TY>
__global__ void gate_kernel(const float* h, int64_t M, int64_t F, Act act, bool residual, TY* y) {
  const int64_t n = M * F;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / F, f = i % F;
    float v = activate(act, h[m * 2 * F + f]) * h[m * 2 * F + F + f];
    if (residual) v += to_f32(y[i]);
    y[i] = from_f32<TY>(v);
  }
}

unsigned grid_for(int64_t n) {
  return unsigned(std::min<int64_t>(blocks_for(n, 256), 8192));
}

}  // namespace

// --- cuBLASLt
// ----------------------------------------------------------------------------------------------------

struct GemmContext::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  void* tuning_output = nullptr;  // where candidate algorithms write while they are timed
  // (rows rounded up to a power of two, N, K, wt, yt, epilogue, beta != 0, W stored [K, N]) -> the algorithm
  // timed fastest for the first GEMM of that class. Prompts of any length thus pay the timing once per power
  // of two, not per length; an algorithm that cuBLASLt rejects for an exact shape gets the heuristic's pick for
  // that shape.
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int, bool, bool>;
  std::map<Key, cublasLtMatmulAlgo_t> algos;

  // W is stored [N, K] (nn.Linear), or [K, N] with w_in_out.
  void matmul(const void* x, int64_t M, int64_t K, const void* W, bool w_in_out, DType wt, int64_t N,
              const void* bias, cublasLtEpilogue_t epilogue, bool accumulate, void* y, DType yt,
              Stream stream);
  // The algorithm for a GEMM shape seen for the first time: the heuristic's candidates, each timed on the
  // real inputs (output to tuning_output), fastest kept; the heuristic's first where timing is impossible
  // (inside a CUDA graph capture, or an output larger than the tuning buffer).
  cublasLtMatmulAlgo_t choose(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                              cublasLtMatrixLayout_t c, const void* x, int64_t M, const void* W, int64_t N,
                              DType yt, float alpha, float beta, Stream stream, bool time_candidates = true);
};

cublasLtMatmulAlgo_t GemmContext::Impl::choose(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                               cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                               const void* x, int64_t M, const void* W, int64_t N, DType yt,
                                               float alpha, float beta, Stream stream, bool time_candidates) {
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t results[kTuningCandidates] = {};
  int found = 0;
  const cublasStatus_t s =
      cublasLtMatmulAlgoGetHeuristic(handle, op, a, b, c, c, pref, kTuningCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no algorithm for a " + std::to_string(M) + "x" + std::to_string(N) +
         " GEMM on this GPU; try another --precision or --device cpu");
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(int(cudaStreamIsCapturing(stream, &capture)), "cudaStreamIsCapturing");
  const size_t out_bytes = size_t(M) * size_t(N) * dtype_size(yt);
  if (!time_candidates || found == 1 || capture != cudaStreamCaptureStatusNone || out_bytes > kTuningBytes)
    return results[0].algo;
  cudaEvent_t start = nullptr, stop = nullptr;
  check(int(cudaEventCreate(&start)), "cudaEventCreate");
  check(int(cudaEventCreate(&stop)), "cudaEventCreate");
  int best = 0;
  float best_ms = INFINITY;
  for (int i = 0; i < found; ++i) {
    auto run = [&] {
      return cublasLtMatmul(handle, op, &alpha, W, a, x, b, &beta, tuning_output, c, tuning_output, c,
                            &results[i].algo, workspace, kWorkspaceBytes, stream);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;  // a candidate that refuses these pointers is skipped
    cudaEventRecord(start, stream);
    run();
    cudaEventRecord(stop, stream);
    float ms = INFINITY;
    if (cudaEventSynchronize(stop) == cudaSuccess) cudaEventElapsedTime(&ms, start, stop);
    if (ms < best_ms) {
      best_ms = ms;
      best = i;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  check(int(cudaGetLastError()), "timing GEMM algorithms");
  return results[best].algo;
}

GemmContext::GemmContext() : impl_(std::make_unique<Impl>()) {
  check_blas(cublasLtCreate(&impl_->handle), "cublasLtCreate");
  check(int(cudaMalloc(&impl_->workspace, kWorkspaceBytes)), "GEMM workspace");
  check(int(cudaMalloc(&impl_->tuning_output, kTuningBytes)), "GEMM tuning buffer");
}

GemmContext::~GemmContext() {
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->tuning_output) cudaFree(impl_->tuning_output);
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t GemmContext::workspace_bytes() {
  return kWorkspaceBytes + kTuningBytes;
}

void GemmContext::Impl::matmul(const void* x, int64_t M, int64_t K, const void* W, bool w_in_out, DType wt,
                               int64_t N, const void* bias, cublasLtEpilogue_t epilogue, bool accumulate,
                               void* y, DType yt, Stream stream) {
  // Column-major view: D[N, M] = op(A)[N, K] · B[K, M] with A = W stored [K, N] (ld K) transposed (or, with
  // w_in_out, stored [N, K] (ld N) as it is) and B = x stored [K, M] (ld K); D = y stored [N, M] (ld N),
  // i.e. row-major y[M, N].
  struct Descriptors {  // released on every path out, errors included
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    ~Descriptors() {
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (c) cublasLtMatrixLayoutDestroy(c);
      if (op) cublasLtMatmulDescDestroy(op);
    }
  } d;
  cublasLtMatmulDesc_t& op = d.op;
  cublasLtMatrixLayout_t &a = d.a, &b = d.b, &c = d.c;
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;  // never the TF32 fast path
  check_blas(cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = w_in_out ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  if (bias) {
    const cudaDataType_t bias_t = blas_type(yt);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_t, sizeof(bias_t));
  }
  if (w_in_out)
    check_blas(cublasLtMatrixLayoutCreate(&a, blas_type(wt), uint64_t(N), uint64_t(K), N), "matrix layout");
  else
    check_blas(cublasLtMatrixLayoutCreate(&a, blas_type(wt), uint64_t(K), uint64_t(N), K), "matrix layout");
  check_blas(cublasLtMatrixLayoutCreate(&b, blas_type(wt), uint64_t(K), uint64_t(M), K), "matrix layout");
  check_blas(cublasLtMatrixLayoutCreate(&c, blas_type(yt), uint64_t(N), uint64_t(M), N), "matrix layout");

  int64_t rows = 1;
  while (rows < M) rows *= 2;
  const Key key{rows, N, K, int(wt), int(yt), int(epilogue), accumulate, w_in_out};
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  auto it = algos.find(key);
  if (it == algos.end())
    it = algos.emplace(key, choose(op, a, b, c, x, M, W, N, yt, alpha, beta, stream)).first;
  cublasLtMatmulAlgo_t algo = it->second;
  cublasLtMatmulHeuristicResult_t fits{};
  if (cublasLtMatmulAlgoCheck(handle, op, a, b, c, c, &algo, &fits) != CUBLAS_STATUS_SUCCESS ||
      fits.workspaceSize > kWorkspaceBytes)
    algo = choose(op, a, b, c, x, M, W, N, yt, alpha, beta, stream, /*time_candidates=*/false);
  const cublasStatus_t s = cublasLtMatmul(handle, op, &alpha, W, a, x, b, &beta, y, c, y, c, &algo, workspace,
                                          kWorkspaceBytes, stream);
  check_blas(s, "cublasLtMatmul");
}

namespace {

void blas_linear(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* W, bool w_in_out,
                 DType wt, int64_t N, const void* bias, Act act, bool residual, void* y, DType yt,
                 Stream stream) {
  // cuBLASLt fuses bias, bias+GELU (tanh form, as gelu_new) and bias+ReLU. GELU is fused only in 16-bit
  // modes: fp32 runs must match references to 1e-4, so there the exact definition runs as its own pass.
  const bool wide = wt == DType::F32;
  cublasLtEpilogue_t epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  bool separate_act = act != Act::Identity;
  if (!residual && act == Act::Relu) {
    epilogue = bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    separate_act = false;
  } else if (!residual && act == Act::GeluTanh && !wide) {
    epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    separate_act = false;
  }
  if (separate_act && residual)
    internal_error("linear: an activation with a residual add is not a plan this backend runs");
  ctx.impl().matmul(x, M, K, W, w_in_out, wt, N, bias, epilogue, residual, y, yt, stream);
  if (separate_act) {
    dispatch_dtype(yt, [&](auto z) {
      using TY = decltype(z);
      activation_kernel<TY><<<grid_for(M * N), 256, 0, stream>>>(static_cast<TY*>(y), M * N, act);
    });
    check_launch("activation");
  }
}

}  // namespace

void linear(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* W, DType wt, int64_t N,
            const void* bias, Act act, bool residual, void* y, DType yt, Stream stream) {
  if (M == 0) return;
  if (M <= kGemvMaxRows) {
    gemv(LinearInput{x, wt}, M, K, W, wt, N, bias, act, false, residual, y, yt, stream);
    return;
  }
  blas_linear(ctx, x, M, K, W, false, wt, N, bias, act, residual, y, yt, stream);
}

void linear_in_out(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* Wt, DType wt, int64_t N,
                   const void* bias, Act act, bool residual, void* y, DType yt, Stream stream) {
  if (M == 0) return;
  blas_linear(ctx, x, M, K, Wt, true, wt, N, bias, act, residual, y, yt, stream);
}

void gated_linear(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* W01, DType wt, int64_t F,
                  Act act, bool residual, void* y, DType yt, float* scratch, Stream stream) {
  if (M == 0) return;
  if (M <= kGemvMaxRows) {
    gemv(LinearInput{x, wt}, M, K, W01, wt, F, nullptr, act, true, residual, y, yt, stream);
    return;
  }
  // fp32 h keeps the two halves' product from overflowing fp16 before the gate.
  ctx.impl().matmul(x, M, K, W01, false, wt, 2 * F, nullptr, CUBLASLT_EPILOGUE_DEFAULT, false, scratch,
                    DType::F32, stream);
  dispatch_dtype(yt, [&](auto z) {
    using TY = decltype(z);
    gate_kernel<TY><<<grid_for(M * F), 256, 0, stream>>>(scratch, M, F, act, residual, static_cast<TY*>(y));
  });
  check_launch("gate");
}

}  // namespace kestrel::cuda
