// Greedy decoding and multinomial sampling: transformers' _sample loop, one session row per output sequence.
// A finished row leaves the session (reorder drops it) instead of being fed pad tokens; its output is padded
// only when the caller asks for transformers' rectangular form (GenerationResult::padded).
// A session that picks tokens itself (Session::chooses_tokens: CUDA) is handed the processors and each row's
// uniform draw and returns only ids; otherwise logits come back and logits_processors.cpp runs here. Plain
// greedy steps on such a session run a step ahead (Session::greedy_ahead): the device starts the next step
// with the ids it just picked while the host reads them, so it never waits for the host between steps.
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

// The choice settings of a config; rows are filled per step.
TokenChoice token_choice(const GenerationConfig& c) {
  TokenChoice choice;
  choice.sample = c.do_sample;
  choice.repetition_penalty = float(c.repetition_penalty);
  if (c.do_sample) {
    choice.temperature = float(c.temperature);
    choice.top_k = c.top_k;
    choice.top_p = c.top_p;
  }
  choice.eos_token_ids = c.eos_token_ids;
  return choice;
}

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

  // The session picks the tokens where it can (only ids leave the GPU); otherwise its logits are processed
  // here. Either way each sampled row draws one uniform number a step, so both give the same tokens.
  TokenChoice choice = token_choice(c);
  const bool on_session = c.no_repeat_ngram_size == 0 && job.session.chooses_tokens(choice);
  std::vector<double> uniforms(live.size());
  auto draw = [&] {
    uniforms.resize(live.size());
    for (size_t row = 0; row < live.size(); ++row)
      uniforms[row] = c.do_sample ? samplers[size_t(live[row].sequence)].uniform() : 0.0;
  };
  auto fill_choice = [&](auto logits_row_of) {
    choice.rows.clear();
    for (size_t row = 0; row < live.size(); ++row) {
      const LiveRow& lr = live[row];
      const RowPlan& plan = job.plans[size_t(result.sequences[size_t(lr.sequence)].prompt_index)];
      choice.rows.push_back({logits_row_of(row), lr.history,
                             plan.min_length > 0 && int64_t(lr.history.size()) < plan.min_length,
                             uniforms[row]});
    }
  };
  // Row `row`'s token from its logits (processed here).
  std::vector<double> probs;
  auto pick_here = [&](std::span<float> scores, size_t row) -> int64_t {
    const LiveRow& lr = live[row];
    const RowPlan& plan = job.plans[size_t(result.sequences[size_t(lr.sequence)].prompt_index)];
    process(scores, lr.history, plan.min_length);
    if (!c.do_sample) return argmax(scores);
    if (!softmax(scores, probs)) return TokenChoice::kNothingLeft;
    return Sampler::categorical(probs, uniforms[row]);
  };

  std::vector<int64_t> tokens;  // this step's token of every live row
  std::vector<float> logits;
  auto pick_all = [&](auto logits_row_of) {
    if (on_session) {
      for (size_t row = 0; row < live.size(); ++row)
        if (tokens[row] == TokenChoice::kChooseOnHost) {
          std::vector<float> scores = job.session.last_logits(logits_row_of(row));
          tokens[row] = pick_here(scores, row);
        }
      return;
    }
    // Processed in a copy: with several sequences a prompt, the rows of one prompt share its logits.
    tokens.assign(live.size(), 0);
    std::vector<float> scores;
    for (size_t row = 0; row < live.size(); ++row) {
      const auto first = logits.begin() + logits_row_of(row) * vocab;
      scores.assign(first, first + vocab);
      tokens[row] = pick_here(scores, row);
    }
  };

  // One prefill per prompt; with several sequences a prompt, its row is then copied for the others.
  auto prompt_row = [&](size_t row) { return int64_t(row) / per_prompt; };
  draw();
  if (on_session) {
    fill_choice(prompt_row);
    tokens = job.session.start_and_choose(job.prompts, decoder_prefixes(job), choice).tokens;
  } else {
    logits = start_session(job);
  }
  pick_all(prompt_row);
  if (per_prompt > 1) {
    std::vector<int64_t> src;
    for (size_t row = 0; row < live.size(); ++row) src.push_back(prompt_row(row));
    job.session.reorder(src);
  }

  auto same_row = [](size_t row) { return int64_t(row); };
  while (true) {
    std::vector<int64_t> keep;
    TokenRows next;
    bool more = false;  // some row may still want the step after the next one (not at max_new_tokens)
    for (size_t row = 0; row < live.size(); ++row) {
      LiveRow& lr = live[row];
      GeneratedSequence& out = result.sequences[size_t(lr.sequence)];
      const RowPlan& plan = job.plans[size_t(out.prompt_index)];
      const int64_t token = tokens[row];
      if (token == TokenChoice::kNothingLeft)
        fail("sampling: every token of sequence " + std::to_string(lr.sequence) +
             " was filtered out (no_repeat_ngram_size / min length leave nothing to sample)");
      lr.history.push_back(token);
      out.tokens.push_back(token);
      if (job.stream) job.stream(lr.sequence, std::span<const int64_t>(&token, 1));
      out.ended_with_eos = is_eos(c, token);
      if (out.ended_with_eos || int64_t(lr.history.size()) >= plan.max_length) continue;
      keep.push_back(int64_t(row));
      next.push_back({token});
      more = more || int64_t(lr.history.size()) + 1 < plan.max_length;
    }
    if (keep.empty()) break;
    if (keep.size() < live.size()) {
      job.session.reorder(keep);
      std::vector<LiveRow> still;
      for (int64_t row : keep) still.push_back(std::move(live[size_t(row)]));
      live = std::move(still);
    }
    draw();
    if (on_session) {
      fill_choice(same_row);
      tokens = job.session.runs_ahead(choice) ? job.session.greedy_ahead(next, more)
                                              : job.session.step_and_choose(next, choice).tokens;
    } else {
      logits = job.session.step(next);
    }
    pick_all(same_row);
  }
  return result;
}

}  // namespace kestrel::detail
