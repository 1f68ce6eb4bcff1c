// The greedy argmax's 64-bit keys (src/kernels/cuda/argmax_key.h): the largest key over a row must be the one
// of torch.argmax's pick (the first NaN if any; else the first index of the largest value, -0 equal to +0).
#include "kernels/cuda/argmax_key.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

using kestrel::cuda::argmax_index;
using kestrel::cuda::argmax_key;

int64_t torch_argmax(const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (std::isnan(v[i])) return int64_t(i);
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return int64_t(best);
}

int64_t key_argmax(const std::vector<float>& v) {
  unsigned long long best = 0;
  for (size_t i = 0; i < v.size(); ++i) best = std::max(best, argmax_key(v[i], int64_t(i)));
  return argmax_index(best);
}

}  // namespace

TEST(ArgmaxKey, PicksWhatTorchArgmaxPicks) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::vector<float>> rows = {
      {1.0f, 3.0f, 2.0f},
      {3.0f, 3.0f, 1.0f},            // ties: the first
      {-5.0f, -1.0f, -1.0f, -3.0f},  // negatives
      {-0.0f, 0.0f, -1.0f},          // -0 equals +0: the first
      {0.0f, -0.0f},                 //
      {-inf, -inf},                  //
      {1.0f, inf, 2.0f, inf},        //
      {1.0f, nan, inf, nan},         // the first NaN, above +inf
      {1.0f, -nan, 2.0f},            // a NaN with its sign bit set, too
      {-std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::denorm_min()},
  };
  for (const auto& r : rows) EXPECT_EQ(key_argmax(r), torch_argmax(r));
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-3, 3);  // few distinct values: many ties
  std::normal_distribution<float> normal(0.0f, 10.0f);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> r(size_t(1 + trial % 97));
    for (auto& x : r) x = trial % 2 ? float(small(rng)) * 0.5f : normal(rng);
    EXPECT_EQ(key_argmax(r), torch_argmax(r)) << "trial " << trial;
  }
}

TEST(ArgmaxKey, IndexRoundTrips) {
  for (int64_t i : {int64_t(0), int64_t(1), int64_t(50256), int64_t(0x7ffffffe)})
    EXPECT_EQ(argmax_index(argmax_key(0.5f, i)), i);
}
