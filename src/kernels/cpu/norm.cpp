// LayerNorm (GPT-2) and RMSNorm (T5), plain and fused with the residual add that precedes them.
// Statistics are accumulated in double over the row: the rows are short and this keeps us at least as exact
// as torch's fp32 reductions.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

namespace {

void layer_norm_row(const float* x, int64_t D, const float* gamma, const float* beta, float eps,
                    float out_scale, float* y) {
  double sum = 0;
  for (int64_t j = 0; j < D; ++j) sum += x[j];
  const float mean = float(sum / double(D));
  double sq = 0;
  for (int64_t j = 0; j < D; ++j) {
    const double d = double(x[j] - mean);
    sq += d * d;
  }
  const float rstd = float(1.0 / std::sqrt(sq / double(D) + double(eps)));
  for (int64_t j = 0; j < D; ++j) {
    float v = (x[j] - mean) * rstd * gamma[j];
    if (beta) v += beta[j];
    y[j] = v * out_scale;
  }
}

void rms_norm_row(const float* x, int64_t D, const float* gamma, float eps, float out_scale, float* y) {
  double sq = 0;
  for (int64_t j = 0; j < D; ++j) sq += double(x[j]) * double(x[j]);
  const float rstd = float(1.0 / std::sqrt(sq / double(D) + double(eps)));
  // transformers: weight * (x * rsqrt(var + eps)), then the optional output scale.
  for (int64_t j = 0; j < D; ++j) y[j] = gamma[j] * (x[j] * rstd) * out_scale;
}

}  // namespace

void layer_norm(const float* x, int64_t M, int64_t D, const float* gamma, const float* beta, float eps,
                float out_scale, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) layer_norm_row(x + i * D, D, gamma, beta, eps, out_scale, y + i * D);
}

void rms_norm(const float* x, int64_t M, int64_t D, const float* gamma, float eps, float out_scale,
              float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) rms_norm_row(x + i * D, D, gamma, eps, out_scale, y + i * D);
}

void add_layer_norm(float* residual, const float* delta, int64_t M, int64_t D, const float* gamma,
                    const float* beta, float eps, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    float* r = residual + i * D;
    for (int64_t j = 0; j < D; ++j) r[j] += delta[i * D + j];
    layer_norm_row(r, D, gamma, beta, eps, 1.0f, y + i * D);
  }
}

void add_rms_norm(float* residual, const float* delta, int64_t M, int64_t D, const float* gamma, float eps,
                  float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    float* r = residual + i * D;
    for (int64_t j = 0; j < D; ++j) r[j] += delta[i * D + j];
    rms_norm_row(r, D, gamma, eps, 1.0f, y + i * D);
  }
}

}  // namespace kestrel::cpu
