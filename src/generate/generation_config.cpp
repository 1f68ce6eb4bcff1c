#include "generate/generation_config.h"

#include <random>

#include "core/error.h"

namespace kestrel {

EarlyStopping parse_early_stopping(const std::string& text, const std::string& what) {
  if (text == "true" || text == "True" || text == "1") return EarlyStopping::WhenFull;
  if (text == "false" || text == "False" || text == "0") return EarlyStopping::Heuristic;
  if (text == "never") return EarlyStopping::Never;
  fail(what + ": '" + text + "' is not one of true, false, never");
}

GenerationConfig make_generation_config(const GenerationDefaults& d, const GenerationOptions& o) {
  GenerationConfig c;
  c.max_new_tokens = o.max_new_tokens ? o.max_new_tokens : d.max_new_tokens;
  c.max_length = d.max_length;
  // transformers (_prepare_generated_length): a max_length equal to GenerationConfig's default 20, from whatever
  // file, means 20 new tokens (clamped to the model's positions); any other value is the total length.
  c.max_length_is_default = d.max_length == 20;
  c.min_new_tokens = o.min_new_tokens ? o.min_new_tokens : d.min_new_tokens;
  c.min_length = d.min_length;
  c.do_sample = o.do_sample.value_or(d.do_sample);
  c.num_beams = o.num_beams.value_or(d.num_beams);
  c.num_return_sequences = o.num_return_sequences.value_or(d.num_return_sequences);
  c.temperature = o.temperature.value_or(d.temperature);
  c.top_k = o.top_k.value_or(d.top_k);
  c.top_p = o.top_p.value_or(d.top_p);
  c.repetition_penalty = o.repetition_penalty.value_or(d.repetition_penalty);
  c.length_penalty = o.length_penalty.value_or(d.length_penalty);
  c.no_repeat_ngram_size = o.no_repeat_ngram_size.value_or(d.no_repeat_ngram_size);
  const EarlyStopping default_stopping = d.early_stopping_never ? EarlyStopping::Never
                                        : d.early_stopping     ? EarlyStopping::WhenFull
                                                               : EarlyStopping::Heuristic;
  c.early_stopping = o.early_stopping.value_or(default_stopping);
  c.seed = o.seed ? *o.seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  c.eos_token_ids = o.eos_token_ids.value_or(d.eos_token_ids);
  c.pad_token_id = o.pad_token_id ? o.pad_token_id : d.pad_token_id;
  if (!c.pad_token_id && !c.eos_token_ids.empty()) c.pad_token_id = c.eos_token_ids.front();
  c.decoder_start_token_id = d.decoder_start_token_id ? d.decoder_start_token_id : d.bos_token_id;
  c.validate();
  return c;
}

void GenerationConfig::validate() const {
  auto num = [](auto v) { return std::to_string(v); };
  if (max_new_tokens && *max_new_tokens <= 0)
    fail("max_new_tokens must be at least 1, got " + num(*max_new_tokens));
  if (max_length <= 0) fail("max_length must be at least 1, got " + num(max_length));
  if (min_new_tokens && *min_new_tokens < 0)
    fail("min_new_tokens must be 0 or more, got " + num(*min_new_tokens));
  if (min_length < 0) fail("min_length must be 0 or more, got " + num(min_length));
  if (num_beams < 1) fail("num_beams must be at least 1, got " + num(num_beams));
  if (num_return_sequences < 1)
    fail("num_return_sequences must be at least 1, got " + num(num_return_sequences));
  if (num_beams == 1 && !do_sample && num_return_sequences > 1)
    fail("num_return_sequences (" + num(num_return_sequences) +
         ") needs beam search (num_beams > 1) or sampling (do_sample); greedy decoding returns one sequence");
  if (num_beams > 1 && num_return_sequences > num_beams)
    fail("num_return_sequences (" + num(num_return_sequences) + ") must not exceed num_beams (" +
         num(num_beams) + ")");
  if (do_sample && !(temperature > 0))
    fail("temperature must be > 0 when sampling, got " + num(temperature) +
         " (for greedy decoding, leave do_sample off)");
  if (top_k < 0) fail("top_k must be 0 (off) or positive, got " + num(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail("top_p must lie in (0, 1], got " + num(top_p));
  if (!(repetition_penalty > 0)) fail("repetition_penalty must be > 0, got " + num(repetition_penalty));
  if (no_repeat_ngram_size < 0)
    fail("no_repeat_ngram_size must be 0 (off) or positive, got " + num(no_repeat_ngram_size));
  for (int64_t e : eos_token_ids)
    if (e < 0) fail("eos_token_id must not be negative, got " + num(e));
  if (pad_token_id && *pad_token_id < 0) fail("pad_token_id must not be negative, got " + num(*pad_token_id));
}

}  // namespace kestrel
