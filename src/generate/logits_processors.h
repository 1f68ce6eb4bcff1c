#pragma once
// transformers' logits processors and warpers, one row (one vocabulary's scores) at a time, in float32 as
// transformers computes them. `history` is the row's decoder sequence so far (GPT-2: prompt + generated; T5:
// the decoder start token + generated), exactly the `input_ids` transformers hands its processors.
#include <cstdint>
#include <span>
#include <vector>

#include "generate/generation_config.h"

namespace kestrel {

// RepetitionPenaltyLogitsProcessor: every token already in `history` gets score*p if negative, else score/p.
void apply_repetition_penalty(std::span<float> scores, std::span<const int64_t> history, float penalty);
// NoRepeatNGramLogitsProcessor: bans (-inf) each token that would complete an n-gram already in `history`.
void apply_no_repeat_ngram(std::span<float> scores, std::span<const int64_t> history, int64_t n);
// MinLength / MinNewTokens: eos ids get -inf while the decoder sequence is shorter than `min_length`.
void suppress_eos_below_min_length(std::span<float> scores, int64_t current_length, int64_t min_length,
                                   std::span<const int64_t> eos_token_ids);
// Warpers (sampling only), in transformers' order.
void apply_temperature(std::span<float> scores, float temperature);
// TopKLogitsWarper: -inf for every score below the k-th largest (ties with it stay).
void apply_top_k(std::span<float> scores, int64_t k, int64_t min_tokens_to_keep);
// TopPLogitsWarper: keeps the smallest set of highest-probability tokens whose mass exceeds top_p.
void apply_top_p(std::span<float> scores, double top_p, int64_t min_tokens_to_keep);

// The whole chain transformers' _get_logits_processor builds for a config: repetition penalty, no-repeat
// n-gram, min length, then (with do_sample) temperature, top-k, top-p.
class LogitsProcessorChain {
 public:
  explicit LogitsProcessorChain(const GenerationConfig& config);
  // `min_length` is the row's own minimum total decoder length (prompt length + min_new_tokens, or
  // min_length).
  void operator()(std::span<float> scores, std::span<const int64_t> history, int64_t min_length) const;

 private:
  const GenerationConfig& c_;
  int64_t min_tokens_to_keep_;
};

// Numerics shared by the decoding strategies.
void log_softmax_inplace(std::span<float> scores);
// softmax into doubles; -inf scores get probability 0. Returns false when every score is -inf.
bool softmax(std::span<const float> scores, std::vector<double>& probs);
int64_t argmax(std::span<const float> scores);  // first index of the maximum, like torch.argmax
// Indices of the k largest scores, largest first; ties keep the lower index first.
std::vector<int64_t> top_k_indices(std::span<const float> scores, int64_t k);

}  // namespace kestrel
