#include "generate/generator.h"

#include <algorithm>
#include <limits>
#include <string>

#include "core/error.h"
#include "generate/decoding.h"

namespace kestrel {

TokenRows GenerationResult::padded() const {
  size_t longest = 0;
  for (const auto& s : sequences) longest = std::max(longest, s.tokens.size());
  TokenRows rows;
  for (const auto& s : sequences) {
    rows.push_back(s.tokens);
    rows.back().resize(longest, pad_token_id);
  }
  return rows;
}

namespace detail {

TokenRows decoder_prefixes(const DecodeJob& job) {
  TokenRows prefixes;
  if (job.session.is_encoder_decoder())
    for (const auto& p : job.plans) prefixes.push_back(p.decoder_prefix);
  return prefixes;
}

std::vector<float> start_session(const DecodeJob& job) {
  return job.session.start(job.prompts, decoder_prefixes(job));
}

bool is_eos(const GenerationConfig& config, int64_t token) {
  return std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), token) !=
         config.eos_token_ids.end();
}

}  // namespace detail

namespace {

void check_prompt_ids(const TokenRows& prompts, int64_t vocab_size) {
  if (prompts.empty()) fail("generate: no prompts given");
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) fail("prompt " + std::to_string(i) + " is empty; give at least one token");
    for (size_t j = 0; j < prompts[i].size(); ++j) {
      const int64_t id = prompts[i][j];
      if (id < 0 || id >= vocab_size)
        fail("prompt " + std::to_string(i) + ": token id " + std::to_string(id) + " at position " +
             std::to_string(j) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
    }
  }
}

// transformers' _prepare_generated_length and _validate_generated_length, for one row alone.
detail::RowPlan plan_row(const Session& session, const std::vector<int64_t>& prompt,
                         const GenerationConfig& c, size_t index) {
  detail::RowPlan plan;
  if (session.is_encoder_decoder()) {
    if (!c.decoder_start_token_id)
      fail("the model has no decoder_start_token_id (or bos_token_id) to start the decoder from");
    plan.decoder_prefix = {*c.decoder_start_token_id};
  } else {
    plan.decoder_prefix = prompt;
  }
  const std::string which = "prompt " + std::to_string(index);
  const int64_t input_length = int64_t(plan.decoder_prefix.size());
  const int64_t positions = session.max_positions();
  if (input_length > positions)
    fail(which + " has " + std::to_string(input_length) + " tokens but the model accepts at most " +
         std::to_string(positions) + " positions");
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (c.max_new_tokens) {
    plan.max_length = *c.max_new_tokens > kMax - input_length ? kMax : input_length + *c.max_new_tokens;
  } else if (!c.max_length_is_default) {
    plan.max_length = c.max_length;
  } else {
    // The model-agnostic default: max_length more tokens, but never past the model's positions.
    plan.max_length = std::min(input_length + c.max_length, positions);
  }
  if (input_length >= plan.max_length)
    fail(which + " has " + std::to_string(input_length) + " decoder tokens but max_length is " +
         std::to_string(plan.max_length) + "; set max_new_tokens instead");
  // The last generated token is never fed back, so the model sees max_length - 1 positions.
  if (plan.max_length - 1 > positions)
    fail(which + " (" + std::to_string(input_length) + " tokens) plus max_new_tokens (" +
         std::to_string(plan.max_length - input_length) + ") needs " + std::to_string(plan.max_length - 1) +
         " positions but the model has " + std::to_string(positions) + "; lower max_new_tokens");
  plan.min_length = c.min_new_tokens ? input_length + *c.min_new_tokens : c.min_length;
  return plan;
}

}  // namespace

int64_t session_rows(const GenerationConfig& config, int64_t prompts) {
  return prompts * std::max<int64_t>(1, std::max(config.num_beams, config.num_return_sequences));
}

GenerationResult generate(Session& session, const TokenRows& prompts, const GenerationConfig& config,
                          const TokenStream& stream) {
  config.validate();
  check_prompt_ids(prompts, session.vocab_size());
  std::vector<detail::RowPlan> plans;
  for (size_t i = 0; i < prompts.size(); ++i) plans.push_back(plan_row(session, prompts[i], config, i));
  const detail::DecodeJob job{session, prompts, plans, config, stream};
  return config.is_beam_search() ? detail::beam_search(job) : detail::greedy_or_sample(job);
}

}  // namespace kestrel
