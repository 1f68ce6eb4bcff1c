#include "generate/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace kestrel {
namespace {

TEST(Sampler, SameSeedAndStreamRepeat) {
  Sampler a(42, 3), b(42, 3), other_stream(42, 4), other_seed(43, 3);
  const std::vector<double> p = {0.1, 0.2, 0.3, 0.4};
  std::vector<int64_t> xa, xb, xc, xd;
  for (int i = 0; i < 64; ++i) {
    xa.push_back(a.categorical(p));
    xb.push_back(b.categorical(p));
    xc.push_back(other_stream.categorical(p));
    xd.push_back(other_seed.categorical(p));
  }
  EXPECT_EQ(xa, xb);
  EXPECT_NE(xa, xc);
  EXPECT_NE(xa, xd);
}

TEST(Sampler, FrequenciesFollowTheProbabilities) {
  Sampler s(7, 0);
  const std::vector<double> p = {0.5, 0.0, 0.3, 0.2};
  std::vector<int> counts(4, 0);
  const int n = 100000;
  for (int i = 0; i < n; ++i) ++counts[size_t(s.categorical(p))];
  EXPECT_EQ(counts[1], 0);  // zero mass is never drawn
  for (size_t i = 0; i < p.size(); ++i) {
    const double sd = std::sqrt(p[i] * (1 - p[i]) / n);
    EXPECT_NEAR(counts[i] / double(n), p[i], 5 * sd + 1e-12) << "token " << i;
  }
}

TEST(Sampler, UnnormalisedWeightsWork) {
  Sampler s(1, 1);
  const std::vector<double> w = {0.0, 3.0};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.categorical(w), 1);
}

TEST(Sampler, WithoutReplacementIsDistinctAndStopsAtTheSupport) {
  Sampler s(5, 0);
  const std::vector<double> p = {0.25, 0.0, 0.25, 0.5};
  auto picked = s.without_replacement(p, 8);
  ASSERT_EQ(picked.size(), 3u);
  std::sort(picked.begin(), picked.end());
  EXPECT_EQ(picked, (std::vector<int64_t>{0, 2, 3}));
}

TEST(Sampler, UniformIsInUnitInterval) {
  Sampler s(9, 9);
  for (int i = 0; i < 1000; ++i) {
    const double u = s.uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

}  // namespace
}  // namespace kestrel
