#pragma once
// Precision calibration for fp16 GPU sessions. fp16 holds values up to ±65504; real T5 checkpoints (and any
// model whose activations grow large) leave that range inside the network, which fp16 turns into inf / NaN.
// Rather than a hand-written list of "unsafe" tensors, the CUDA session measures: an fp32 pass of the CPU
// engine over a short sample records the largest |value| every op writes, and each tensor whose range comes
// within kFp16Headroom of the limit is kept in fp32, the linear layers reading it run in fp32 (as
// transformers keeps T5's wo), and tensors attention needs in the compute dtype switch the whole session to
// bf16.
#include <map>

#include "models/plan.h"
#include "runtime/engine.h"

namespace kestrel {

constexpr float kFp16Max = 65504.0f;
constexpr float kFp16Headroom = 16.0f;  // inputs the sample did not show may run this much larger

// Largest |value| each op of the model's plan (encoder and decoder programs) wrote during an fp32 CPU forward
// over a fixed sample: `tokens` ids spread over the vocabulary (GPT-2: the prompt; T5: the encoder input, and
// a decoder prefix of a quarter as many tokens).
std::map<const Op*, float> measure_activation_ranges(const Model& model, int threads, int64_t tokens = 32);

}  // namespace kestrel
