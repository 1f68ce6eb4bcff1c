#include "generate/sampler.h"

#include <vector>

#include "core/error.h"

namespace kestrel {

namespace {
// splitmix64: spreads (seed, stream) over the whole state so neighbouring streams are unrelated.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

Sampler::Sampler(uint64_t seed, uint64_t stream) {
  std::seed_seq seq{uint32_t(mix(seed)), uint32_t(mix(seed) >> 32), uint32_t(mix(seed ^ mix(stream))),
                    uint32_t(mix(seed ^ mix(stream)) >> 32)};
  engine_.seed(seq);
}

double Sampler::uniform() {
  return double(engine_() >> 11) * 0x1.0p-53;
}

int64_t Sampler::categorical(std::span<const double> probs, double u) {
  double total = 0;
  for (double p : probs) total += p;
  if (!(total > 0)) internal_error("sampling from a distribution with no mass");
  const double target = u * total;
  double cumulative = 0;
  int64_t last_positive = -1;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0) continue;
    cumulative += probs[i];
    last_positive = int64_t(i);
    if (target < cumulative) return int64_t(i);
  }
  return last_positive;  // rounding left target at the very top: the last token with mass
}

std::vector<int64_t> Sampler::without_replacement(std::span<const double> probs, int64_t k) {
  std::vector<double> remaining(probs.begin(), probs.end());
  std::vector<int64_t> picked;
  for (int64_t i = 0; i < k; ++i) {
    double total = 0;
    for (double p : remaining) total += p;
    if (!(total > 0)) break;
    const int64_t idx = categorical(remaining);
    picked.push_back(idx);
    remaining[size_t(idx)] = 0;
  }
  return picked;
}

}  // namespace kestrel
