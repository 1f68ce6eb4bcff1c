#pragma once
// Model definitions: turn a config + a checkpoint's tensors into a Plan. Every tensor the plan needs is
// checked (present, floating point, the shape the config implies); a problem is a kestrel::Error naming the
// tensor and the checkpoint. Tensors the plan does not use (e.g. GPT-2's attn.bias mask buffers) are ignored.
#include "io/config.h"
#include "io/weights.h"
#include "models/plan.h"

namespace kestrel {

Plan make_gpt2_plan(const GPT2Config& config, const Weights& weights);
Plan make_t5_plan(const T5Config& config, const Weights& weights);
// Dispatches on the config's architecture.
Plan make_plan(const ModelConfig& config, const Weights& weights);

}  // namespace kestrel
