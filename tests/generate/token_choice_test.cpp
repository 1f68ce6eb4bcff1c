// generate() through a session that picks tokens itself (Session::chooses_tokens, as CudaSession does on the
// GPU): the same tokens as processing the logits on the host, for greedy decoding and sampling with every
// processor a backend takes, with rows the backend hands back (kChooseOnHost), several sequences a prompt,
// and beam search from each beam's ranked continuations.
#include <gtest/gtest.h>

#include <string>

#include "fake_session.h"
#include "generate/generator.h"
#include "generate/logits_processors.h"
#include "generate/sampler.h"

namespace kestrel {
namespace {

using testing::FakeSession;
using testing::hashed_logits;

constexpr int64_t kVocab = 40;

// Chooses on its "device" with the TokenChoice it is given (the host processors, applied one by one from the
// choice alone), and hands every third row back to the host.
class ChoosingSession : public FakeSession {
 public:
  ChoosingSession()
      : FakeSession(kVocab, [](const auto& e, const auto& d) { return hashed_logits(e, d, kVocab); }) {}

  bool chooses_tokens(const TokenChoice&) const override { return true; }
  ChosenTokens start_and_choose(const TokenRows& rows, const TokenRows& prefix,
                                const TokenChoice& choice) override {
    last_ = start(rows, prefix, false);
    return choose(choice);
  }
  ChosenTokens step_and_choose(const TokenRows& tokens, const TokenChoice& choice) override {
    last_ = step(tokens, false);
    return choose(choice);
  }
  std::vector<float> last_logits(int64_t row) const override {
    return {last_.begin() + row * kVocab, last_.begin() + (row + 1) * kVocab};
  }
  int chosen = 0, handed_back = 0;

 private:
  ChosenTokens choose(const TokenChoice& c) {
    ChosenTokens out;
    for (size_t r = 0; r < c.rows.size(); ++r) {
      const TokenChoice::Row& row = c.rows[r];
      std::vector<float> s = last_logits(row.logits_row);
      if (c.candidates > 0) {  // beam search: ranked continuations, never handed back
        log_softmax_inplace(s);
        if (c.repetition_penalty != 1.0f) apply_repetition_penalty(s, row.history, c.repetition_penalty);
        if (row.suppress_eos) suppress_eos_below_min_length(s, 0, 1, c.eos_token_ids);
        for (float& x : s) x += row.add;
        for (int64_t t : top_k_indices(s, c.candidates)) {
          out.tokens.push_back(t);
          out.scores.push_back(s[size_t(t)]);
        }
        ++chosen;
        continue;
      }
      if ((chosen++ % 3) == 2) {
        ++handed_back;
        out.tokens.push_back(TokenChoice::kChooseOnHost);
        continue;
      }
      if (c.repetition_penalty != 1.0f) apply_repetition_penalty(s, row.history, c.repetition_penalty);
      if (row.suppress_eos) suppress_eos_below_min_length(s, 0, 1, c.eos_token_ids);
      if (!c.sample) {
        out.tokens.push_back(argmax(s));
        continue;
      }
      if (c.temperature != 1.0f) apply_temperature(s, c.temperature);
      if (c.top_k != 0) apply_top_k(s, c.top_k, c.min_tokens_to_keep);
      if (c.top_p < 1.0) apply_top_p(s, c.top_p, c.min_tokens_to_keep);
      std::vector<double> probs;
      out.tokens.push_back(softmax(s, probs) ? Sampler::categorical(probs, row.uniform)
                                             : TokenChoice::kNothingLeft);
    }
    return out;
  }
  std::vector<float> last_;
};

GenerationConfig config(bool sample, uint64_t seed) {
  GenerationConfig c;
  c.max_new_tokens = 12;
  c.do_sample = sample;
  c.seed = seed;
  c.eos_token_ids = {3};
  return c;
}

FakeSession host_session() {
  return FakeSession(kVocab, [](const auto& e, const auto& d) { return hashed_logits(e, d, kVocab); });
}

// generate() through ChoosingSession gives what it gives on the host: tokens, eos and (beams) scores. Rows
// are handed back except in beam search, whose ranked continuations never are.
void expect_same_as_host(const GenerationConfig& c, const TokenRows& prompts) {
  FakeSession host = host_session();
  ChoosingSession device;
  testing::expect_same_sequences(generate(device, prompts, c), generate(host, prompts, c));
  EXPECT_GT(device.chosen, 0);
  if (!c.is_beam_search()) {
    EXPECT_GT(device.handed_back, 0);
  }
}

const TokenRows kPrompts = {{1, 2, 3}, {7}, {9, 9, 9, 9}, {5, 6}};

TEST(TokenChoice, GreedyWithRepetitionPenaltyAndMinLength) {
  auto c = config(false, 0);
  c.repetition_penalty = 1.7;
  c.min_new_tokens = 6;
  expect_same_as_host(c, kPrompts);
}

TEST(TokenChoice, SamplingWithEveryWarper) {
  for (uint64_t seed : {1, 2, 3}) {
    auto c = config(true, seed);
    c.temperature = 0.7;
    c.top_k = 12;
    c.top_p = 0.8;
    c.repetition_penalty = 1.3;
    c.min_new_tokens = 3;
    expect_same_as_host(c, kPrompts);
  }
}

TEST(TokenChoice, SeveralSequencesAPromptShareItsLogitsRow) {
  auto c = config(true, 9);
  c.top_k = 0;
  c.num_return_sequences = 3;
  expect_same_as_host(c, kPrompts);
}

TEST(TokenChoice, BeamSearchFromRankedContinuations) {
  for (int64_t beams : {2, 4}) {
    auto c = config(false, 0);
    c.num_beams = beams;
    c.num_return_sequences = beams;
    c.repetition_penalty = 1.4;
    c.min_new_tokens = 3;
    c.length_penalty = 0.8;
    SCOPED_TRACE("beams " + std::to_string(beams));
    expect_same_as_host(c, kPrompts);
  }
}

TEST(TokenChoice, NoRepeatNgramStaysOnTheHost) {
  auto c = config(false, 0);
  c.no_repeat_ngram_size = 2;
  ChoosingSession device;
  FakeSession host = host_session();
  EXPECT_EQ(generate(device, kPrompts, c).padded(), generate(host, kPrompts, c).padded());
  EXPECT_EQ(device.chosen, 0);
}

}  // namespace
}  // namespace kestrel
