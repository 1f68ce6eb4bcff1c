#include "models/model_plan.h"

namespace kestrel {

Plan make_plan(const ModelConfig& config, const Weights& weights) {
  if (config.is_gpt2()) return make_gpt2_plan(config.gpt2(), weights);
  return make_t5_plan(config.t5(), weights);
}

}  // namespace kestrel
