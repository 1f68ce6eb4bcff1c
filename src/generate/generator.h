#pragma once
// generate(): greedy, sampling or beam search over a Session, with transformers' semantics.
//
//   auto config = make_generation_config(model.config().generation, options);
//   auto result = generate(*session, {{464, 2068}, {15496}}, config, on_tokens);
//
// Each prompt is generated independently (the Session's rows have their own lengths): a batch gives exactly
// what each prompt gives alone. For GPT-2 a prompt is the start of the decoder sequence; for T5 it is the
// encoder input and the decoder starts from config.decoder_start_token_id.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "generate/generation_config.h"
#include "runtime/session.h"

namespace kestrel {

struct GeneratedSequence {
  int64_t prompt_index = 0;     // which prompt it continues
  std::vector<int64_t> tokens;  // the new tokens only, including the eos that ended it (if one did)
  bool ended_with_eos = false;
  // Beam search only: transformers' sequences_scores (sum of processed log-probs /
  // generated_length**length_penalty).
  std::optional<float> score;
};

struct GenerationResult {
  // Prompt-major: prompt i's r-th sequence is sequences[i * num_return_sequences + r] (best beam first).
  std::vector<GeneratedSequence> sequences;
  // What transformers fills the tail of shorter rows with in its batched output tensor (-1 when it has none).
  int64_t pad_token_id = -1;
  // The new tokens of every sequence padded with pad_token_id to the longest, as transformers returns them.
  TokenRows padded() const;
};

// Receives the new token ids of output sequence `sequence` (an index into GenerationResult::sequences) as
// they are produced: one per step for greedy decoding and sampling; for beam search, which only knows its
// winners at the end, every sequence once when the search finishes (transformers' streamers do not support
// beams either).
using TokenStream = std::function<void(int64_t sequence, std::span<const int64_t> new_tokens)>;

// Throws kestrel::Error for an empty prompt, an id outside the vocabulary, or a prompt (plus max_new_tokens)
// longer than the model's positions.
GenerationResult generate(Session& session, const TokenRows& prompts, const GenerationConfig& config,
                          const TokenStream& stream = {});

// The most session rows generate() holds at once for `prompts` prompts: one per beam, or per sequence
// sampled. What a caller plans a session for (CUDA sessions plan their memory up front).
int64_t session_rows(const GenerationConfig& config, int64_t prompts);

}  // namespace kestrel
