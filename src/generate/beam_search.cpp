// Beam search as transformers 5.x's vectorised _beam_search does it, one prompt at a time:
//  - each step keeps the top K = max(2, 1 + #eos) * num_beams continuations of all beams (or samples K
//  without
//    replacement with do_sample), so num_beams of them can always continue when the best ones end;
//  - the best num_beams continuations that did not hit a stop (eos or max length) run on;
//  - those among the first num_beams that did stop compete with the finished hypotheses on
//    score / generated_length**length_penalty (generated_length counts from the decoder prompt, eos
//    included);
//  - a prompt is done when no running beam can beat its worst finished hypothesis (early_stopping False /
//  "never"
//    heuristics), when num_beams hypotheses are finished (early_stopping True), or when every continuation
//    stops.
// Scores are float32 with transformers' -1e9 sentinels, so ties and rounding resolve as they do there.
#include <algorithm>
#include <cmath>
#include <span>

#include "core/error.h"
#include "generate/decoding.h"
#include "generate/logits_processors.h"
#include "generate/sampler.h"

namespace kestrel::detail {

namespace {

constexpr float kUnreachable = -1.0e9f;  // transformers' "this one can't be chosen" offset

struct Hypothesis {
  std::vector<int64_t> tokens;  // generated tokens only
  float score = kUnreachable;   // length-penalised
  bool finished = false;
};

struct Candidate {
  int64_t beam;  // running beam it extends
  int64_t token;
  float score;  // accumulated log-prob
  bool stops;   // eos or max length
};

// One prompt's search.
struct BeamState {
  int64_t prompt = 0;
  const RowPlan* plan = nullptr;
  std::vector<std::vector<int64_t>> running;  // generated tokens of each running beam
  std::vector<float> running_scores;
  std::vector<Hypothesis> finished;  // num_beams slots, best first
  bool improvable = true;            // transformers' is_early_stop_heuristic_unsatisfied
  int64_t session_rows = 1;          // rows it holds in the session: 1 after start(), num_beams afterwards
};

float length_normaliser(int64_t generated_length, double length_penalty) {
  return float(std::pow(double(generated_length), length_penalty));
}

Candidate candidate(const BeamState& st, const DecodeJob& job, int64_t beam, int64_t token, float score) {
  const int64_t cur_len = int64_t(st.plan->decoder_prefix.size() + st.running[0].size());
  return {beam, token, score, is_eos(job.config, token) || cur_len + 1 >= st.plan->max_length};
}

// Top K (or sampled K) continuations over all beams, best first.
std::vector<Candidate> top_continuations(const BeamState& st, const DecodeJob& job,
                                         std::span<const float> acc, int64_t vocab, int64_t k,
                                         Sampler& sampler) {
  const GenerationConfig& c = job.config;
  std::vector<int64_t> picked;
  if (c.do_sample) {
    std::vector<double> probs;
    if (!softmax(acc, probs)) fail("beam sampling: every continuation was filtered out");
    picked = sampler.without_replacement(probs, k);
    // torch.multinomial would refuse fewer than K candidates with mass; fill up with the best remaining ones.
    for (int64_t idx : top_k_indices(acc, k)) {
      if (int64_t(picked.size()) >= k) break;
      if (std::find(picked.begin(), picked.end(), idx) == picked.end()) picked.push_back(idx);
    }
    std::stable_sort(picked.begin(), picked.end(), [&](int64_t a, int64_t b) { return acc[a] > acc[b]; });
  } else {
    picked = top_k_indices(acc, k);
  }
  std::vector<Candidate> out;
  for (int64_t idx : picked) out.push_back(candidate(st, job, idx / vocab, idx % vocab, acc[size_t(idx)]));
  return out;
}

// The same top K when the session ranked each beam's continuations itself (Session::chooses_tokens with
// TokenChoice::candidates = K): the best K of the beams' lists, in top_k_indices' order over [beam, vocab].
std::vector<Candidate> merge_ranked(const BeamState& st, const DecodeJob& job, const ChosenTokens& chosen,
                                    size_t first_row, int64_t vocab, int64_t k) {
  struct Ranked {
    float score;
    int64_t flat;
  };
  std::vector<Ranked> all;
  for (int64_t b = 0; b < job.config.num_beams; ++b)
    for (int64_t i = 0; i < k; ++i) {
      const size_t at = (first_row + size_t(b)) * size_t(k) + size_t(i);
      if (chosen.tokens[at] >= 0) all.push_back({chosen.scores[at], b * vocab + chosen.tokens[at]});
    }
  std::stable_sort(all.begin(), all.end(), [](const Ranked& a, const Ranked& b) {
    return a.score > b.score || (a.score == b.score && a.flat < b.flat);
  });
  if (int64_t(all.size()) > k) all.resize(size_t(k));
  std::vector<Candidate> out;
  for (const Ranked& r : all) out.push_back(candidate(st, job, r.flat / vocab, r.flat % vocab, r.score));
  return out;
}

// Continuations each step keeps: enough that num_beams can go on when the best ones end.
int64_t candidates_per_step(const GenerationConfig& c) {
  return std::max<int64_t>(2, 1 + int64_t(c.eos_token_ids.size())) * c.num_beams;
}

// The decoder sequence beam b of a prompt continues (its processors' history).
std::vector<int64_t> beam_history(const BeamState& st, int64_t b) {
  std::vector<int64_t> history = st.plan->decoder_prefix;
  history.insert(history.end(), st.running[size_t(b)].begin(), st.running[size_t(b)].end());
  return history;
}

// The top K continuations of one prompt from the logits of its session rows, processed here.
std::vector<Candidate> host_candidates(const BeamState& st, const DecodeJob& job,
                                       const LogitsProcessorChain& process, std::span<const float> logits,
                                       int64_t vocab, Sampler& sampler) {
  const int64_t beams = job.config.num_beams;
  // Processed log-probs of every beam plus its running score, flattened [beam, vocab].
  std::vector<float> acc(size_t(beams * vocab));
  for (int64_t b = 0; b < beams; ++b) {
    std::span<float> row(acc.data() + b * vocab, size_t(vocab));
    const int64_t session_row = st.session_rows == 1 ? 0 : b;
    std::copy_n(logits.begin() + session_row * vocab, vocab, row.begin());
    log_softmax_inplace(row);
    process(row, beam_history(st, b), st.plan->min_length);
    for (float& s : row) s += st.running_scores[size_t(b)];
  }
  return top_continuations(st, job, acc, vocab, candidates_per_step(job.config), sampler);
}

// One step of one prompt with its top K continuations `cands`; returns true when the prompt is done.
// `src_rows` receives, for each beam that runs on, the session row (relative to the prompt's first) it
// continues.
bool step_prompt(BeamState& st, const DecodeJob& job, const std::vector<Candidate>& cands,
                 std::vector<int64_t>& src_rows) {
  const GenerationConfig& c = job.config;
  const int64_t beams = c.num_beams;
  const int64_t prompt_length = int64_t(st.plan->decoder_prefix.size());
  const int64_t cur_len = prompt_length + int64_t(st.running[0].size());

  // Beams that run on: the best candidates that did not stop.
  std::vector<float> running_scores(cands.size());
  for (size_t i = 0; i < cands.size(); ++i)
    running_scores[i] = cands[i].score + (cands[i].stops ? kUnreachable : 0.0f);
  const std::vector<int64_t> next = top_k_indices(running_scores, beams);

  // Finished hypotheses: merge the old ones with the candidates among the first num_beams that stopped.
  const float norm = length_normaliser(cur_len + 1 - prompt_length, c.length_penalty);
  const bool all_finished =
      std::all_of(st.finished.begin(), st.finished.end(), [](const Hypothesis& h) { return h.finished; });
  std::vector<float> merged_scores;
  for (const auto& h : st.finished) merged_scores.push_back(h.score);
  for (size_t i = 0; i < cands.size(); ++i) {
    float s = cands[i].score / norm;
    if (all_finished && c.early_stopping == EarlyStopping::WhenFull) s += kUnreachable;
    if (!st.improvable) s += kUnreachable;
    if (!(cands[i].stops && int64_t(i) < beams)) s += kUnreachable;
    merged_scores.push_back(s);
  }
  std::vector<Hypothesis> finished;
  for (int64_t m : top_k_indices(merged_scores, beams)) {
    if (m < beams) {
      finished.push_back(st.finished[size_t(m)]);
      continue;
    }
    const size_t i = size_t(m - beams);
    Hypothesis h;
    h.tokens = st.running[size_t(cands[i].beam)];
    h.tokens.push_back(cands[i].token);
    h.score = merged_scores[size_t(m)];
    h.finished = cands[i].stops && int64_t(i) < beams;
    finished.push_back(std::move(h));
  }

  std::vector<std::vector<int64_t>> running;
  src_rows.clear();
  for (int64_t i : next) {
    const Candidate& cand = cands[size_t(i)];
    running.push_back(st.running[size_t(cand.beam)]);
    running.back().push_back(cand.token);
    src_rows.push_back(st.session_rows == 1 ? 0 : cand.beam);
  }
  for (size_t j = 0; j < next.size(); ++j) st.running_scores[j] = running_scores[size_t(next[j])];
  st.running = std::move(running);
  st.finished = std::move(finished);

  // Can a running beam still beat the worst finished hypothesis?
  const int64_t new_len = cur_len + 1;
  const int64_t best_length = (c.early_stopping == EarlyStopping::Never && c.length_penalty > 0)
                                  ? st.plan->max_length - prompt_length
                                  : new_len - prompt_length;
  const float best_possible = st.running_scores[0] / length_normaliser(best_length, c.length_penalty);
  float worst_finished = st.finished[0].score;
  for (const auto& h : st.finished) worst_finished = std::min(worst_finished, h.score);
  bool beatable = false;
  for (const auto& h : st.finished) beatable |= best_possible > (h.finished ? worst_finished : kUnreachable);
  st.improvable = st.improvable && beatable;

  const bool now_all_finished =
      std::all_of(st.finished.begin(), st.finished.end(), [](const Hypothesis& h) { return h.finished; });
  const bool open_beam = !(now_all_finished && c.early_stopping == EarlyStopping::WhenFull);
  const bool can_continue =
      !std::all_of(cands.begin(), cands.end(), [](const Candidate& x) { return x.stops; });
  return !(st.improvable && open_beam && can_continue);
}

}  // namespace

GenerationResult beam_search(const DecodeJob& job) {
  const GenerationConfig& c = job.config;
  const int64_t vocab = job.session.vocab_size();
  const int64_t beams = c.num_beams;
  const LogitsProcessorChain process(c);

  GenerationResult result;
  // transformers fills with `pad_token_id or eos_token_id[0]` when there is an eos, else -1; `or` treats a
  // pad id of 0 (T5's) as missing, so T5 beam outputs are padded with eos.
  if (!c.eos_token_ids.empty())
    result.pad_token_id =
        (c.pad_token_id && *c.pad_token_id != 0) ? *c.pad_token_id : c.eos_token_ids.front();

  std::vector<BeamState> states(job.prompts.size());
  std::vector<Sampler> samplers;
  for (size_t p = 0; p < states.size(); ++p) {
    BeamState& st = states[p];
    st.prompt = int64_t(p);
    st.plan = &job.plans[p];
    st.running.assign(size_t(beams), {});
    // Only the first beam is live at the start, so the beams don't all pick the same tokens.
    st.running_scores.assign(size_t(beams), kUnreachable);
    st.running_scores[0] = 0.0f;
    st.finished.assign(size_t(beams), Hypothesis{});
    samplers.emplace_back(c.seed, uint64_t(p));
  }
  std::vector<size_t> live(states.size());  // states holding session rows, in row order
  for (size_t p = 0; p < live.size(); ++p) live[p] = p;

  // A session that ranks continuations itself (CUDA) returns each beam's top K with its running score added;
  // otherwise every beam's logits come back and are processed here.
  const int64_t k = candidates_per_step(c);
  TokenChoice choice;
  choice.repetition_penalty = float(c.repetition_penalty);
  choice.eos_token_ids = c.eos_token_ids;
  choice.candidates = k;
  const bool on_session = !c.do_sample && c.no_repeat_ngram_size == 0 && job.session.chooses_tokens(choice);
  std::vector<std::vector<int64_t>> histories;  // what the choice rows' spans point at
  auto fill_choice = [&] {
    histories.clear();
    for (size_t s : live)
      for (int64_t b = 0; b < beams; ++b) histories.push_back(beam_history(states[s], b));
    choice.rows.clear();
    int64_t base = 0;
    size_t h = 0;
    for (size_t s : live) {
      const BeamState& st = states[s];
      for (int64_t b = 0; b < beams; ++b, ++h) {
        const bool short_ = st.plan->min_length > 0 && int64_t(histories[h].size()) < st.plan->min_length;
        choice.rows.push_back(
            {base + (st.session_rows == 1 ? 0 : b), histories[h], short_, 0.0, st.running_scores[size_t(b)]});
      }
      base += st.session_rows;
    }
  };

  std::vector<float> logits;
  ChosenTokens ranked;
  if (on_session) {
    fill_choice();
    ranked = job.session.start_and_choose(job.prompts, decoder_prefixes(job), choice);
  } else {
    logits = start_session(job);
  }
  while (!live.empty()) {
    std::vector<int64_t> reorder;
    TokenRows next_tokens;
    std::vector<size_t> still_live;
    int64_t base = 0;
    std::vector<int64_t> src_rows;
    for (size_t i = 0; i < live.size(); ++i) {
      const size_t s = live[i];
      BeamState& st = states[s];
      const std::vector<Candidate> cands =
          on_session ? merge_ranked(st, job, ranked, i * size_t(beams), vocab, k)
                     : host_candidates(st, job, process,
                                       std::span<const float>(logits.data() + base * vocab,
                                                              size_t(st.session_rows * vocab)),
                                       vocab, samplers[s]);
      const bool done = step_prompt(st, job, cands, src_rows);
      if (!done) {
        for (size_t j = 0; j < src_rows.size(); ++j) {
          reorder.push_back(base + src_rows[j]);
          next_tokens.push_back({st.running[j].back()});
        }
        still_live.push_back(s);
      }
      base += st.session_rows;
    }
    for (size_t s : still_live) states[s].session_rows = beams;
    live = std::move(still_live);
    if (live.empty()) break;
    job.session.reorder(reorder);
    if (on_session) {
      fill_choice();
      ranked = job.session.step_and_choose(next_tokens, choice);
    } else {
      logits = job.session.step(next_tokens);
    }
  }

  for (const BeamState& st : states)
    for (int64_t r = 0; r < c.num_return_sequences; ++r) {
      // A slot can stay unfinished only when processors left nothing but -inf scores; transformers then
      // returns its placeholder (the prompt and padding), which is what an empty token list means here.
      const Hypothesis& h = st.finished[size_t(r)];
      GeneratedSequence seq;
      seq.prompt_index = st.prompt;
      seq.tokens = h.tokens;
      seq.ended_with_eos = !h.tokens.empty() && is_eos(c, h.tokens.back());
      seq.score = h.score;
      result.sequences.push_back(std::move(seq));
    }
  if (job.stream)
    for (size_t i = 0; i < result.sequences.size(); ++i) job.stream(int64_t(i), result.sequences[i].tokens);
  return result;
}

}  // namespace kestrel::detail
