#pragma once
// Seeded categorical sampling. Kestrel uses its own RNG (not torch's), so sampled tokens match transformers
// in distribution only. Each output sequence draws from its own stream (seed, stream id), so a sequence's
// samples do not depend on which other rows share the batch or when they finish.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace kestrel {

class Sampler {
 public:
  Sampler(uint64_t seed, uint64_t stream);
  // A uniform double in [0, 1) from the top 53 bits (the same on every standard library).
  double uniform();
  // Draws an index with probability proportional to probs[i] (non-negative, not all zero).
  int64_t categorical(std::span<const double> probs) { return categorical(probs, uniform()); }
  // The same with the uniform draw u made beforehand (a backend choosing on the device was handed it).
  static int64_t categorical(std::span<const double> probs, double u);
  // torch.multinomial without replacement: k distinct indices, drawn one after another in proportion to the
  // remaining weights (fewer when fewer have weight).
  std::vector<int64_t> without_replacement(std::span<const double> probs, int64_t k);

 private:
  std::mt19937_64 engine_;
};

}  // namespace kestrel
