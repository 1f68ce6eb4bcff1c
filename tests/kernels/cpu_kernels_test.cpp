// Each CPU kernel against a naive reference written straight from the math (double accumulation).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {
namespace {

std::vector<float> random_vec(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void expect_near(const std::vector<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1 + std::fabs(want[i]))) << "at " << i;
}

double ref_act(Act a, double x) {
  switch (a) {
    case Act::Identity:
      return x;
    case Act::GeluTanh:
      return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case Act::GeluErf:
      return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case Act::QuickGelu:
      return x / (1 + std::exp(-1.702 * x));
    case Act::Relu:
      return std::max(0.0, x);
    case Act::Silu:
      return x / (1 + std::exp(-x));
    case Act::Tanh:
      return std::tanh(x);
    case Act::Sigmoid:
      return 1 / (1 + std::exp(-x));
  }
  return 0;
}

const Act kAllActs[] = {Act::Identity, Act::GeluTanh, Act::GeluErf, Act::QuickGelu,
                        Act::Relu,     Act::Silu,     Act::Tanh,    Act::Sigmoid};

TEST(Activation, MatchesDefinitions) {
  for (Act a : kAllActs)
    for (double x = -6; x <= 6; x += 0.37) EXPECT_NEAR(activate(a, float(x)), ref_act(a, x), 2e-6) << int(a);
}

class LinearShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

// M = 1 takes the matrix-vector path; N >= 128 splits the output columns across threads.
TEST_P(LinearShapes, BiasActivationAndResidual) {
  const auto [M, N] = GetParam();
  const int64_t K = 37;
  const auto x = random_vec(M * K, 1), W = random_vec(N * K, 2), bias = random_vec(N, 3);
  const auto y0 = random_vec(M * N, 4);
  for (Act act : kAllActs)
    for (bool residual : {false, true})
      for (bool with_bias : {false, true}) {
        std::vector<float> y = y0;
        linear(x.data(), M, K, W.data(), N, with_bias ? bias.data() : nullptr, act, residual, y.data());
        std::vector<double> want(M * N);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double s = with_bias ? bias[j] : 0;
            for (int64_t k = 0; k < K; ++k) s += double(x[i * K + k]) * W[j * K + k];
            want[i * N + j] = ref_act(act, s) + (residual ? y0[i * N + j] : 0);
          }
        expect_near(y, want, 1e-5);
      }
}
INSTANTIATE_TEST_SUITE_P(Shapes, LinearShapes,
                         ::testing::Values(std::tuple<int64_t, int64_t>{5, 23},
                                           std::tuple<int64_t, int64_t>{1, 23},
                                           std::tuple<int64_t, int64_t>{1, 300},
                                           std::tuple<int64_t, int64_t>{7, 300}));

TEST(Linear, GatedFfn) {
  const int64_t M = 3, K = 19, F = 11;
  const auto x = random_vec(M * K, 5), W = random_vec(2 * F * K, 6);
  for (bool residual : {false, true}) {
    std::vector<float> y(M * F, 0.5f);
    gated_linear(x.data(), M, K, W.data(), F, Act::GeluTanh, residual, y.data());
    std::vector<double> want(M * F);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < F; ++j) {
        double g = 0, l = 0;
        for (int64_t k = 0; k < K; ++k) {
          g += double(x[i * K + k]) * W[j * K + k];
          l += double(x[i * K + k]) * W[(F + j) * K + k];
        }
        want[i * F + j] = ref_act(Act::GeluTanh, g) * l + (residual ? 0.5 : 0);
      }
    expect_near(y, want, 1e-5);
  }
}

std::vector<double> ref_layer_norm(const std::vector<float>& x, int64_t M, int64_t D,
                                   const std::vector<float>& g, const std::vector<float>* b, double eps,
                                   double scale) {
  std::vector<double> y(M * D);
  for (int64_t i = 0; i < M; ++i) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < D; ++j) mean += x[i * D + j];
    mean /= D;
    for (int64_t j = 0; j < D; ++j) var += (x[i * D + j] - mean) * (x[i * D + j] - mean);
    var /= D;
    for (int64_t j = 0; j < D; ++j)
      y[i * D + j] = ((x[i * D + j] - mean) / std::sqrt(var + eps) * g[j] + (b ? (*b)[j] : 0)) * scale;
  }
  return y;
}

std::vector<double> ref_rms_norm(const std::vector<float>& x, int64_t M, int64_t D,
                                 const std::vector<float>& g, double eps, double scale) {
  std::vector<double> y(M * D);
  for (int64_t i = 0; i < M; ++i) {
    double ms = 0;
    for (int64_t j = 0; j < D; ++j) ms += double(x[i * D + j]) * x[i * D + j];
    ms /= D;
    for (int64_t j = 0; j < D; ++j) y[i * D + j] = x[i * D + j] / std::sqrt(ms + eps) * g[j] * scale;
  }
  return y;
}

TEST(Norm, LayerNormAndRmsNorm) {
  const int64_t M = 4, D = 40;
  auto x = random_vec(M * D, 7, 3.0f);
  for (auto& v : x) v += 2.0f;  // a non-zero mean, so LayerNorm's centring matters
  const auto g = random_vec(D, 8), b = random_vec(D, 9);
  std::vector<float> y(M * D);
  layer_norm(x.data(), M, D, g.data(), b.data(), 1e-5f, 1.0f, y.data());
  expect_near(y, ref_layer_norm(x, M, D, g, &b, 1e-5, 1.0), 1e-5);
  rms_norm(x.data(), M, D, g.data(), 1e-6f, 0.125f, y.data());
  expect_near(y, ref_rms_norm(x, M, D, g, 1e-6, 0.125), 1e-5);
  std::vector<float> inplace = x;  // the runtime normalises a buffer in place
  rms_norm(inplace.data(), M, D, g.data(), 1e-6f, 1.0f, inplace.data());
  expect_near(inplace, ref_rms_norm(x, M, D, g, 1e-6, 1.0), 1e-5);
}

TEST(Norm, FusedResidualAdd) {
  const int64_t M = 3, D = 72;
  const auto x = random_vec(M * D, 10), delta = random_vec(M * D, 11), g = random_vec(D, 12),
             b = random_vec(D, 13);
  std::vector<float> sum(M * D);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = x[i] + delta[i];
  std::vector<float> r = x, y(M * D);
  add_layer_norm(r.data(), delta.data(), M, D, g.data(), b.data(), 1e-5f, y.data());
  EXPECT_EQ(r, sum);
  expect_near(y, ref_layer_norm(sum, M, D, g, &b, 1e-5, 1.0), 1e-5);
  r = x;
  add_rms_norm(r.data(), delta.data(), M, D, g.data(), 1e-6f, y.data());
  expect_near(y, ref_rms_norm(sum, M, D, g, 1e-6, 1.0), 1e-5);
}

TEST(Embedding, GatherWithAndWithoutPositions) {
  const int64_t V = 9, P = 6, D = 5;
  const auto table = random_vec(V * D, 14), pos = random_vec(P * D, 15);
  const std::vector<int64_t> ids{3, 0, 8, 3}, positions{0, 1, 5, 2};
  std::vector<float> y(ids.size() * D);
  embedding(ids.data(), positions.data(), 4, table.data(), pos.data(), D, y.data());
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < D; ++j)
      EXPECT_EQ(y[i * D + j], table[ids[i] * D + j] + pos[positions[i] * D + j]);
  embedding(ids.data(), positions.data(), 4, table.data(), nullptr, D, y.data());
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < D; ++j) EXPECT_EQ(y[i * D + j], table[ids[i] * D + j]);
}

// transformers' _relative_position_bucket evaluated by hand for num_buckets=32, max_distance=128.
TEST(PositionBias, BucketsMatchTransformers) {
  // bidirectional: 16 buckets a side, 8 exact.
  EXPECT_EQ(t5_relative_bucket(0, true, 32, 128), 0);
  EXPECT_EQ(t5_relative_bucket(-3, true, 32, 128), 3);
  EXPECT_EQ(t5_relative_bucket(3, true, 32, 128), 19);
  EXPECT_EQ(t5_relative_bucket(-8, true, 32, 128), 8);    // 8 + int(log(1)/log(16)*8) = 8
  EXPECT_EQ(t5_relative_bucket(-16, true, 32, 128), 10);  // 8 + int(log(2)/log(16)*8) = 8 + 2
  EXPECT_EQ(t5_relative_bucket(-1000, true, 32, 128), 15);
  EXPECT_EQ(t5_relative_bucket(1000, true, 32, 128), 31);
  // causal: 32 buckets, 16 exact; future positions all map to bucket 0.
  EXPECT_EQ(t5_relative_bucket(5, false, 32, 128), 0);
  EXPECT_EQ(t5_relative_bucket(-15, false, 32, 128), 15);
  EXPECT_EQ(t5_relative_bucket(-32, false, 32, 128), 21);  // 16 + int(log(2)/log(8)*16) = 16 + 5
  EXPECT_EQ(t5_relative_bucket(-500, false, 32, 128), 31);
  // Small settings: 8 buckets, max_distance 16.
  EXPECT_EQ(t5_relative_bucket(-2, true, 8, 16), 2);
  EXPECT_EQ(t5_relative_bucket(-20, true, 8, 16), 3);
}

TEST(PositionBias, TableLooksUpBuckets) {
  const int64_t H = 3, buckets = 8, max_rel = 20;
  const auto w = random_vec(buckets * H, 16);
  std::vector<float> out(H * (2 * max_rel + 1));
  t5_position_bias(w.data(), H, max_rel, false, buckets, 16, out.data());
  for (int64_t r = -max_rel; r <= max_rel; ++r)
    for (int64_t h = 0; h < H; ++h)
      EXPECT_EQ(out[h * (2 * max_rel + 1) + r + max_rel],
                w[t5_relative_bucket(r, false, buckets, 16) * H + h]);
}

// Naive attention for one segment: full score matrix, explicit mask.
std::vector<double> ref_attention(const AttentionSegment& s, const AttentionParams& p) {
  std::vector<double> out(s.n_queries * p.heads * p.head_dim, 0.0);
  for (int64_t i = 0; i < s.n_queries; ++i)
    for (int64_t h = 0; h < p.heads; ++h) {
      std::vector<double> sc(s.n_keys);
      double mx = -1e300;
      for (int64_t j = 0; j < s.n_keys; ++j) {
        double d = 0;
        for (int64_t e = 0; e < p.head_dim; ++e)
          d += double(s.q[i * s.q_stride + h * p.head_dim + e]) * s.k[j * s.kv_stride + h * p.head_dim + e];
        d *= p.scale;
        if (p.bias) d += p.bias[h * p.bias_span + (j - (s.q_start + i)) + p.bias_offset];
        if (p.causal && j > s.q_start + i) d = -1e300;
        sc[j] = d;
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (auto& v : sc) sum += (v = (v <= -1e299 ? 0 : std::exp(v - mx)));
      for (int64_t j = 0; j < s.n_keys; ++j)
        for (int64_t e = 0; e < p.head_dim; ++e)
          out[(i * p.heads + h) * p.head_dim + e] += sc[j] / sum * s.v[j * s.kv_stride + h * p.head_dim + e];
    }
  return out;
}

TEST(Attention, CausalBiasAndSegmentsMatchNaive) {
  const int64_t H = 3, hd = 7, I = H * hd;
  // Two rows with different cache lengths: row 0 has 5 cached + 3 new, row 1 has 0 cached + 4 new.
  const auto q = random_vec(7 * I, 17), k = random_vec(8 * I, 18), v = random_vec(8 * I, 19),
             k1 = random_vec(4 * I, 20), v1 = random_vec(4 * I, 21);
  const int64_t max_rel = 7;
  const auto bias = random_vec(H * (2 * max_rel + 1), 22);
  for (bool causal : {true, false})
    for (bool with_bias : {false, true}) {
      std::vector<float> out(7 * I, -1.0f);
      AttentionSegment s0{q.data(), I, 3, 5, k.data(), v.data(), I, 8, out.data(), I};
      AttentionSegment s1{q.data() + 3 * I, I, 4, 0, k1.data(), v1.data(), I, 4, out.data() + 3 * I, I};
      AttentionParams p{H, hd, 0.37f, causal};
      if (with_bias) {
        p.bias = bias.data();
        p.bias_span = 2 * max_rel + 1;
        p.bias_offset = max_rel;
      }
      attention({s0, s1}, p);
      auto want0 = ref_attention(s0, p), want1 = ref_attention(s1, p);
      want0.insert(want0.end(), want1.begin(), want1.end());
      expect_near(out, want0, 1e-5);
    }
}

TEST(Attention, StridedQkvInput) {
  // Keys and values read out of a packed [q | k | v] buffer, as the T5 encoder does.
  const int64_t H = 2, hd = 5, I = H * hd, T = 6;
  const auto qkv = random_vec(T * 3 * I, 23);
  std::vector<float> out(T * I);
  AttentionSegment s{qkv.data(), 3 * I, T, 0, qkv.data() + I, qkv.data() + 2 * I, 3 * I, T, out.data(), I};
  AttentionParams p{H, hd, 1.0f, false};
  attention({s}, p);
  expect_near(out, ref_attention(s, p), 1e-5);
}

}  // namespace
}  // namespace kestrel::cpu
