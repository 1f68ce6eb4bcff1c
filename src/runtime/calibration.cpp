#include "runtime/calibration.h"

#include <algorithm>

#include "runtime/cpu_session.h"

namespace kestrel {

std::map<const Op*, float> measure_activation_ranges(const Model& model, int threads, int64_t tokens) {
  const Plan& plan = model.plan();
  const int64_t vocab = model.config().vocab_size();
  const int64_t n = std::max<int64_t>(1, std::min(tokens, plan.max_positions));
  auto sample = [&](int64_t count, int64_t salt) {
    std::vector<int64_t> row;
    for (int64_t i = 0; i < count; ++i) row.push_back((i * 7919 + salt) % vocab);
    return row;
  };
  SessionOptions options;
  options.threads = threads;
  CpuSession session(model, options);
  std::map<const Op*, float> ranges;
  session.record_ranges(&ranges);
  if (plan.encoder.empty()) {
    session.start({sample(n, 17)});
  } else {
    std::vector<int64_t> prefix = sample(std::max<int64_t>(1, n / 4), 29);
    prefix[0] = model.decoder_start_token_id();
    session.start({sample(n, 17)}, {prefix});
  }
  return ranges;
}

}  // namespace kestrel
