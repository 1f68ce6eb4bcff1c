#pragma once
// What one generate() call does: the decoding strategy, its limits and its logits processors.
// Semantics follow transformers' GenerationConfig (5.x); a model's generation_config.json gives the defaults
// (GenerationDefaults) and whatever the caller sets explicitly in GenerationOptions overrides them.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/config.h"

namespace kestrel {

// transformers' early_stopping: False (the default heuristic), True (stop a prompt as soon as num_beams
// hypotheses are finished) or "never" (only stop when no better hypothesis is possible).
enum class EarlyStopping { Heuristic, WhenFull, Never };
// Parses "true"/"false"/"never" (also "1"/"0"); throws naming `what`.
EarlyStopping parse_early_stopping(const std::string& text, const std::string& what);

// Explicit choices of the caller; every unset field falls back to the model's GenerationDefaults.
struct GenerationOptions {
  std::optional<int64_t> max_new_tokens, min_new_tokens;
  std::optional<bool> do_sample;
  std::optional<int64_t> num_beams, num_return_sequences, top_k, no_repeat_ngram_size;
  std::optional<double> temperature, top_p, repetition_penalty, length_penalty;
  std::optional<EarlyStopping> early_stopping;
  std::optional<uint64_t> seed;  // unset: a random seed
  std::optional<std::vector<int64_t>> eos_token_ids;
  std::optional<int64_t> pad_token_id;
};

// The resolved, validated settings the generator runs with.
struct GenerationConfig {
  // Length limits. max_new_tokens wins; otherwise max_length is the total decoder length (prompt included, as
  // in transformers), and when max_length was never configured the model-agnostic default of 20 new tokens
  // applies, clamped to the model's positions.
  std::optional<int64_t> max_new_tokens;
  int64_t max_length = 20;
  bool max_length_is_default = true;
  std::optional<int64_t> min_new_tokens;
  int64_t min_length = 0;  // total decoder length below which eos is suppressed

  bool do_sample = false;
  int64_t num_beams = 1, num_return_sequences = 1;
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0, length_penalty = 1.0;
  int64_t top_k = 50, no_repeat_ngram_size = 0;
  EarlyStopping early_stopping = EarlyStopping::Heuristic;
  uint64_t seed = 0;

  std::vector<int64_t> eos_token_ids;
  // transformers: with no pad id, the first eos id pads finished rows. Unset when there is neither.
  std::optional<int64_t> pad_token_id;
  std::optional<int64_t> decoder_start_token_id;  // encoder-decoder models only

  bool is_beam_search() const { return num_beams > 1; }
  // Throws kestrel::Error naming the option for any value transformers would reject (and a few it would
  // silently misuse, e.g. top_p outside (0, 1]).
  void validate() const;
};

// Merges the model's defaults with the caller's explicit options and validates the result.
GenerationConfig make_generation_config(const GenerationDefaults& defaults, const GenerationOptions& options);

}  // namespace kestrel
