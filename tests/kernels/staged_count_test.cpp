// The arithmetic of the FFN kernels' staged counter (src/kernels/cuda/staged_count.h), simulated on the host:
// calls of different grid sizes one after another on one counter, their blocks arriving in any order.
#include "kernels/cuda/staged_count.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

namespace staged = kestrel::cuda::staged;

namespace {

// One call of `blocks` blocks arriving in a random order on `count`: every block's target is the count once
// all have arrived, and no block that has arrived sees the count there before the last one adds.
void run_call(unsigned long long& count, unsigned blocks, std::mt19937& rng) {
  std::vector<unsigned> order(blocks);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), rng);
  const unsigned long long start = count, end = start + staged::kPerCall;
  for (size_t i = 0; i < order.size(); ++i) {
    const unsigned long long before = count;
    count += staged::add(order[i], blocks);
    EXPECT_EQ(staged::target(before), end) << "block " << order[i] << " of " << blocks;
    if (i + 1 < order.size()) {
      EXPECT_LT(count, end) << "all staged before the last block arrived";
    }
  }
  EXPECT_EQ(count, end);
}

}  // namespace

TEST(StagedCount, EveryBlockOfEveryCallWaitsForExactlyItsCall) {
  std::mt19937 rng(7);
  unsigned long long count = 0;
  for (unsigned blocks : {132u, 1u, 7u, 264u, 132u, 2u, 1000u, 132u}) run_call(count, blocks, rng);
}

TEST(StagedCount, BlockZeroArrivingFirstOrLast) {
  unsigned long long count = 5 * staged::kPerCall;
  // Block 0 first: the count jumps close to the end but stays below it until the others arrive.
  count += staged::add(0, 3);
  EXPECT_LT(count, 6 * staged::kPerCall);
  EXPECT_EQ(staged::target(count), 6 * staged::kPerCall);
  count += staged::add(1, 3);
  count += staged::add(2, 3);
  EXPECT_EQ(count, 6 * staged::kPerCall);
  // Block 0 last.
  const unsigned long long b1 = count;
  count += staged::add(1, 2);
  EXPECT_EQ(staged::target(b1), 7 * staged::kPerCall);
  EXPECT_EQ(staged::target(count), 7 * staged::kPerCall);
  count += staged::add(0, 2);
  EXPECT_EQ(count, 7 * staged::kPerCall);
}

TEST(StagedCount, LargestGridStillFits) {
  std::mt19937 rng(11);
  unsigned long long count = 0;
  run_call(count, unsigned(staged::kPerCall - 1), rng);
  run_call(count, 3u, rng);
}
