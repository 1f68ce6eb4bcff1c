// generate() through a session that runs plain greedy steps ahead (Session::greedy_ahead, as CudaSession does
// on the GPU): the same tokens as on the host, with rows ending at different steps (a step run ahead is then
// dropped), at max_new_tokens (no step is run ahead past the last one) and filling the session's positions.
#include <gtest/gtest.h>

#include <limits>

#include "fake_session.h"
#include "generate/generator.h"
#include "generate/logits_processors.h"

namespace kestrel {
namespace {

using testing::FakeSession;
using testing::hashed_logits;

constexpr int64_t kVocab = 40;

// Picks greedy tokens itself and, when asked to, feeds the next step before returning (committed to the
// fake's rows at once, taken back if any other call comes first), checking the contract as it goes.
class AheadSession : public FakeSession {
 public:
  explicit AheadSession(int64_t max_positions = std::numeric_limits<int64_t>::max())
      : FakeSession(
            kVocab, [](const auto& e, const auto& d) { return hashed_logits(e, d, kVocab); }, false,
            max_positions) {}

  bool chooses_tokens(const TokenChoice&) const override { return true; }
  bool runs_ahead(const TokenChoice& c) const override {
    bool plain = !c.sample && c.candidates == 0 && c.repetition_penalty == 1.0f;
    for (size_t r = 0; r < c.rows.size(); ++r)
      plain = plain && !c.rows[r].suppress_eos && c.rows[r].logits_row == int64_t(r);
    return plain;
  }
  ChosenTokens start_and_choose(const TokenRows& rows, const TokenRows& prefix, const TokenChoice&) override {
    settle();
    return {argmax_rows(start(rows, prefix, false)), {}};
  }
  ChosenTokens step_and_choose(const TokenRows& tokens, const TokenChoice& c) override {
    settle();
    if (runs_ahead(c)) ++plain_steps_not_ahead;
    return {argmax_rows(step(tokens, false)), {}};
  }
  void reorder(const std::vector<int64_t>& src) override {
    settle();
    FakeSession::reorder(src);
  }
  int64_t decoder_length(int64_t b) const override {
    return FakeSession::decoder_length(b) - (running_ ? 1 : 0);
  }

  std::vector<int64_t> greedy_ahead(const TokenRows& tokens, bool more) override {
    std::vector<int64_t> ids;
    if (running_ && tokens == fed_) {
      ids = ahead_ids_;
      running_ = false;
      ++hits;
    } else {
      settle();
      ids = argmax_rows(step(tokens, false));
    }
    bool room = true;
    for (int64_t b = 0; b < batch_size(); ++b) room = room && decoder_length(b) + 1 <= max_positions();
    if (more && room) {
      ahead_ids_ = argmax_rows(step(rows_of(ids), false));
      fed_ = rows_of(ids);
      running_ = true;
      ++launched;
    }
    return ids;
  }

  int hits = 0, launched = 0, dropped = 0, plain_steps_not_ahead = 0;

 private:
  void settle() {
    if (!running_) return;
    unfeed_last();
    running_ = false;
    ++dropped;
  }
  static TokenRows rows_of(const std::vector<int64_t>& ids) {
    TokenRows rows;
    for (int64_t t : ids) rows.push_back({t});
    return rows;
  }
  static std::vector<int64_t> argmax_rows(const std::vector<float>& logits) {
    std::vector<int64_t> ids;
    for (size_t r = 0; r * kVocab < logits.size(); ++r)
      ids.push_back(argmax(std::span<const float>(logits.data() + r * kVocab, kVocab)));
    return ids;
  }
  bool running_ = false;
  TokenRows fed_;
  std::vector<int64_t> ahead_ids_;
};

const TokenRows kPrompts = {{1, 2, 3}, {7}, {9, 9, 9, 9}, {5, 6}};

GenerationConfig greedy(std::vector<int64_t> eos, int64_t max_new_tokens) {
  GenerationConfig c;
  c.max_new_tokens = max_new_tokens;
  c.eos_token_ids = std::move(eos);
  return c;
}

void expect_same_as_host(const GenerationConfig& c, AheadSession& ahead, int64_t max_positions) {
  FakeSession host(
      kVocab, [](const auto& e, const auto& d) { return hashed_logits(e, d, kVocab); }, false, max_positions);
  testing::expect_same_sequences(generate(ahead, kPrompts, c), generate(host, kPrompts, c));
  EXPECT_GT(ahead.hits, 0);
  EXPECT_EQ(ahead.plain_steps_not_ahead, 0);  // every plain greedy step went through greedy_ahead
}

TEST(GreedyAhead, RowsEndingAtDifferentStepsGiveTheHostsTokens) {
  int dropped = 0;
  for (int64_t eos : {3, 5, 11, 17, 23}) {
    AheadSession ahead;
    expect_same_as_host(greedy({eos}, 16), ahead, std::numeric_limits<int64_t>::max());
    dropped += ahead.dropped;
  }
  EXPECT_GT(dropped, 0);  // some row ended while the step after was running: that step was dropped
}

TEST(GreedyAhead, NoStepRunsAheadPastMaxNewTokens) {
  AheadSession ahead;
  expect_same_as_host(greedy({}, 10), ahead, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(ahead.dropped, 0);
  EXPECT_EQ(ahead.launched, ahead.hits);  // every step run ahead was used
}

TEST(GreedyAhead, FillsTheSessionsMaxPositions) {
  AheadSession ahead(9);  // the fake throws past 9 tokens a row; the longest prompt (4) + 5 new fills them
  expect_same_as_host(greedy({}, 5), ahead, 9);
  EXPECT_EQ(ahead.dropped, 0);
}

}  // namespace
}  // namespace kestrel
