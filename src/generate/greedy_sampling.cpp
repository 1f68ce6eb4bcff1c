// Greedy decoding and multinomial sampling: transformers' _sample loop, one session row per output sequence.
// A finished row leaves the session (reorder drops it) instead of being fed pad tokens; its output is padded
// only when the caller asks for transformers' rectangular form (GenerationResult::padded).
#include <span>

#include "core/error.h"
#include "generate/decoding.h"
#include "generate/logits_processors.h"
#include "generate/sampler.h"

namespace kestrel::detail {

namespace {

// Session rows whose sequences keep going: position in this list = row in the session.
struct LiveRow {
  int64_t sequence;              // index into GenerationResult::sequences
  std::vector<int64_t> history;  // the decoder sequence so far
};

}  // namespace

GenerationResult greedy_or_sample(const DecodeJob& job) {
  const GenerationConfig& c = job.config;
  const int64_t vocab = job.session.vocab_size();
  const int64_t per_prompt = c.num_return_sequences;  // > 1 only when sampling
  const LogitsProcessorChain process(c);

  GenerationResult result;
  result.pad_token_id = c.pad_token_id.value_or(-1);
  std::vector<LiveRow> live;
  std::vector<Sampler> samplers;
  for (size_t p = 0; p < job.prompts.size(); ++p)
    for (int64_t r = 0; r < per_prompt; ++r) {
      const int64_t seq = int64_t(result.sequences.size());
      result.sequences.emplace_back().prompt_index = int64_t(p);
      live.push_back({seq, job.plans[p].decoder_prefix});
      if (c.do_sample) samplers.emplace_back(c.seed, uint64_t(seq));
    }

  std::vector<float> logits = start_session(job);
  if (per_prompt > 1) {
    // One prefill per prompt, then copies of its row for the other sequences.
    std::vector<int64_t> src;
    std::vector<float> expanded;
    for (size_t p = 0; p < job.prompts.size(); ++p)
      for (int64_t r = 0; r < per_prompt; ++r) {
        src.push_back(int64_t(p));
        expanded.insert(expanded.end(), logits.begin() + int64_t(p) * vocab,
                        logits.begin() + int64_t(p + 1) * vocab);
      }
    job.session.reorder(src);
    logits = std::move(expanded);
  }

  std::vector<double> probs;
  while (!live.empty()) {
    std::vector<int64_t> keep;
    TokenRows next;
    for (size_t row = 0; row < live.size(); ++row) {
      LiveRow& lr = live[row];
      GeneratedSequence& out = result.sequences[size_t(lr.sequence)];
      const RowPlan& plan = job.plans[size_t(out.prompt_index)];
      std::span<float> scores(logits.data() + int64_t(row) * vocab, size_t(vocab));
      process(scores, lr.history, plan.min_length);
      int64_t token;
      if (c.do_sample) {
        if (!softmax(scores, probs))
          fail("sampling: every token of sequence " + std::to_string(lr.sequence) +
               " was filtered out (no_repeat_ngram_size / min length leave nothing to sample)");
        token = samplers[size_t(lr.sequence)].categorical(probs);
      } else {
        token = argmax(scores);
      }
      lr.history.push_back(token);
      out.tokens.push_back(token);
      if (job.stream) job.stream(lr.sequence, std::span<const int64_t>(&token, 1));
      out.ended_with_eos = is_eos(c, token);
      if (out.ended_with_eos || int64_t(lr.history.size()) >= plan.max_length) continue;
      keep.push_back(int64_t(row));
      next.push_back({token});
    }
    if (keep.empty()) break;
    if (keep.size() < live.size()) {
      job.session.reorder(keep);
      std::vector<LiveRow> still;
      for (int64_t row : keep) still.push_back(std::move(live[size_t(row)]));
      live = std::move(still);
    }
    logits = job.session.step(next);
  }
  return result;
}

}  // namespace kestrel::detail
