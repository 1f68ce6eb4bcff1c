// Linear layers: one SGEMM (oneDNN) (weights packed [out, in], so x · Wᵀ), then a fused epilogue
// (bias, activation, gate, residual add) in one pass over the output.
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

namespace {

// h[M,N] = x[M,K] · W[N,K]ᵀ through oneDNN's SGEMM, which picks its kernels from the CPU's ISA at run time
// (AVX-512 / AVX2 / SSE) and threads itself with the same OpenMP runtime as our loops, so one thread knob
// governs both. (OpenBLAS 0.3.21, Debian's, falls back to its generic SSE3 kernels on CPUs it does not recognise,
// such as many cloud Xeons; that made it 3x slower than PyTorch here.) For one row (batch-1 decode) oneDNN
// takes its matrix-vector path, streaming W once.
void gemm_nt(const float* x, int64_t M, int64_t K, const float* W, int64_t N, float* h) {
  const dnnl_status_t st = dnnl_sgemm('N', 'T', M, N, K, 1.0f, x, K, W, K, 0.0f, h, N);
  if (st != dnnl_success) internal_error("oneDNN sgemm failed (status " + std::to_string(int(st)) + ")");
}

// Scratch for GEMM results that must not overwrite the output (residual and gated forms). One per thread that
// calls a kernel; the kernels themselves are called from one thread at a time per session.
std::vector<float>& scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf;
}

}  // namespace

void linear(const float* x, int64_t M, int64_t K, const float* W, int64_t N, const float* bias, Act act,
            bool residual, float* y) {
  float* h = residual ? scratch(size_t(M * N)).data() : y;
  gemm_nt(x, M, K, W, N, h);
  if (!bias && act == Act::Identity && !residual) return;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    const float* hr = h + i * N;
    float* yr = y + i * N;
    for (int64_t j = 0; j < N; ++j) {
      float v = hr[j];
      if (bias) v += bias[j];
      v = activate(act, v);
      yr[j] = residual ? yr[j] + v : v;
    }
  }
}

void gated_linear(const float* x, int64_t M, int64_t K, const float* W01, int64_t F, Act act, bool residual,
                  float* y) {
  float* h = scratch(size_t(M * 2 * F)).data();
  gemm_nt(x, M, K, W01, 2 * F, h);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    const float* gate = h + i * 2 * F;
    const float* lin = gate + F;
    float* yr = y + i * F;
    for (int64_t j = 0; j < F; ++j) {
      const float v = activate(act, gate[j]) * lin[j];
      yr[j] = residual ? yr[j] + v : v;
    }
  }
}

}  // namespace kestrel::cpu
