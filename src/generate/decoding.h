#pragma once
// Internal to generate/: what the strategies share. generator.cpp validates the prompts and works out each
// row's limits; greedy_sampling.cpp and beam_search.cpp run the loops.
#include <cstdint>
#include <span>
#include <vector>

#include "generate/generator.h"

namespace kestrel::detail {

// One prompt's decoder sequence start and length bounds (total decoder lengths, as transformers counts them).
struct RowPlan {
  std::vector<int64_t> decoder_prefix;  // GPT-2: the prompt; T5: [decoder_start_token_id]
  int64_t max_length = 0;               // stop once the decoder sequence is this long
  int64_t min_length = 0;               // eos is suppressed below this length
};

struct DecodeJob {
  Session& session;
  const TokenRows& prompts;
  const std::vector<RowPlan>& plans;
  const GenerationConfig& config;
  const TokenStream& stream;
};

// The decoder prefixes session.start() takes with the prompts: T5's per row, none for GPT-2 (the prompt is it).
TokenRows decoder_prefixes(const DecodeJob& job);
// Runs session.start() for the prompts (T5: with the decoder prefixes); returns logits [prompts, vocab].
std::vector<float> start_session(const DecodeJob& job);
bool is_eos(const GenerationConfig& config, int64_t token);

GenerationResult greedy_or_sample(const DecodeJob& job);
GenerationResult beam_search(const DecodeJob& job);

}  // namespace kestrel::detail
