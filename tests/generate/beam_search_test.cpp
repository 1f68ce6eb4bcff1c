// Beam search against a fake session: exhaustive-search equivalence, score bookkeeping, batching, streaming.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "fake_session.h"
#include "generate/generator.h"
#include "generate/logits_processors.h"

namespace kestrel {
namespace {

using testing::FakeSession;
using testing::hashed_logits;

FakeSession hashed_session(int64_t vocab, bool encdec = false) {
  return FakeSession(
      vocab, [vocab](const auto& e, const auto& d) { return hashed_logits(e, d, vocab); }, encdec);
}

GenerationConfig beam(int64_t beams, int64_t max_new) {
  GenerationConfig c;
  c.num_beams = beams;
  c.max_new_tokens = max_new;
  return c;
}

// Sum of log-softmax of the chosen tokens, as beam search accumulates it (no processors).
double sequence_log_prob(const std::vector<int64_t>& enc, std::vector<int64_t> dec,
                         const std::vector<int64_t>& gen, int64_t vocab) {
  double total = 0;
  for (int64_t t : gen) {
    auto l = hashed_logits(enc, dec, vocab);
    log_softmax_inplace(l);
    total += l[size_t(t)];
    dec.push_back(t);
  }
  return total;
}

TEST(BeamSearch, EnoughBeamsMakeItExhaustive) {
  // vocab 3, 3 new tokens: 27 sequences; with 27 beams, no length penalty and no early stop, the search keeps
  // them all, so the returned sequences are the best ones overall, best first.
  const int64_t vocab = 3;
  auto c = beam(27, 3);
  c.length_penalty = 0.0;
  c.early_stopping = EarlyStopping::Never;
  c.num_return_sequences = 6;
  auto s = hashed_session(vocab);
  const auto r = generate(s, {{1, 2}}, c);
  std::vector<std::pair<double, std::vector<int64_t>>> all;
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t d = 0; d < 3; ++d)
        all.push_back({sequence_log_prob({}, {1, 2}, {a, b, d}, vocab), {a, b, d}});
  std::sort(all.begin(), all.end(), [](auto& x, auto& y) { return x.first > y.first; });
  ASSERT_EQ(r.sequences.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(r.sequences[i].tokens, all[i].second) << "rank " << i;
    EXPECT_NEAR(*r.sequences[i].score, all[i].first, 1e-4);
  }
}

TEST(BeamSearch, ScoresAreLengthPenalisedLogProbsSortedBestFirst) {
  const int64_t vocab = 16;
  for (double lp : {-1.0, 0.0, 1.0, 2.0}) {
    for (auto es : {EarlyStopping::Heuristic, EarlyStopping::WhenFull, EarlyStopping::Never}) {
      auto c = beam(4, 7);
      c.length_penalty = lp;
      c.early_stopping = es;
      c.num_return_sequences = 4;
      c.eos_token_ids = {3, 5};
      c.pad_token_id = 0;
      auto s = hashed_session(vocab);
      const auto r = generate(s, {{7, 1}}, c);
      ASSERT_EQ(r.sequences.size(), 4u);
      for (size_t i = 0; i < r.sequences.size(); ++i) {
        const auto& seq = r.sequences[i];
        ASSERT_FALSE(seq.tokens.empty());
        // Every hypothesis ends in eos or at the length limit, and contains no earlier eos.
        for (size_t j = 0; j + 1 < seq.tokens.size(); ++j) {
          EXPECT_NE(seq.tokens[j], 3);
          EXPECT_NE(seq.tokens[j], 5);
        }
        EXPECT_TRUE(seq.ended_with_eos || seq.tokens.size() == 7u);
        const double expected =
            sequence_log_prob({}, {7, 1}, seq.tokens, vocab) / std::pow(double(seq.tokens.size()), lp);
        EXPECT_NEAR(*seq.score, expected, 1e-4) << "lp " << lp << " rank " << i;
        if (i > 0) {
          EXPECT_GE(*r.sequences[i - 1].score, *seq.score);
        }
      }
    }
  }
}

TEST(BeamSearch, BatchOfRaggedPromptsEqualsEachAlone) {
  const int64_t vocab = 20;
  const TokenRows prompts = {{1}, {2, 3, 4, 5}, {6, 6, 6}};
  auto c = beam(3, 6);
  c.num_return_sequences = 2;
  c.eos_token_ids = {2};
  c.length_penalty = 1.5;
  auto bs = hashed_session(vocab);
  const auto batched = generate(bs, prompts, c);
  ASSERT_EQ(batched.sequences.size(), 6u);
  for (size_t p = 0; p < prompts.size(); ++p) {
    auto s = hashed_session(vocab);
    const auto alone = generate(s, {prompts[p]}, c);
    for (size_t r = 0; r < 2; ++r) {
      EXPECT_EQ(batched.sequences[p * 2 + r].tokens, alone.sequences[r].tokens) << p << "/" << r;
      EXPECT_EQ(batched.sequences[p * 2 + r].prompt_index, int64_t(p));
      EXPECT_EQ(*batched.sequences[p * 2 + r].score, *alone.sequences[r].score);
    }
  }
}

TEST(BeamSearch, EncoderDecoderAndBatchSizes) {
  const int64_t vocab = 12;
  auto c = beam(4, 5);
  c.decoder_start_token_id = 0;
  c.eos_token_ids = {1};
  c.pad_token_id = 0;
  auto s = hashed_session(vocab, /*encdec=*/true);
  const auto r = generate(s, {{5, 6, 7}, {8}}, c);
  EXPECT_EQ(r.pad_token_id, 1);           // transformers: `pad_token_id or eos` treats pad 0 as missing
  EXPECT_EQ(s.batch_history.front(), 2);  // one encoder pass per prompt
  for (size_t i = 1; i < s.batch_history.size(); ++i) EXPECT_LE(s.batch_history[i], 8);
  const TokenRows encoder_inputs = {{5, 6, 7}, {8}};
  for (const auto& seq : r.sequences) {
    const double log_prob =
        sequence_log_prob(encoder_inputs[size_t(seq.prompt_index)], {0}, seq.tokens, vocab);
    EXPECT_NEAR(*seq.score, log_prob / double(seq.tokens.size()), 1e-4);  // length_penalty 1
  }
}

TEST(BeamSearch, StreamsEachSequenceOnceAtTheEnd) {
  auto c = beam(3, 4);
  c.num_return_sequences = 3;
  auto s = hashed_session(10);
  std::vector<std::vector<int64_t>> got(3);
  int calls = 0;
  const auto r = generate(s, {{1}}, c, [&](int64_t seq, std::span<const int64_t> t) {
    ++calls;
    got[size_t(seq)].assign(t.begin(), t.end());
  });
  EXPECT_EQ(calls, 3);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got[i], r.sequences[i].tokens);
}

TEST(BeamSearch, WithSamplingIsSeededAndValid) {
  auto c = beam(3, 6);
  c.do_sample = true;
  c.top_k = 0;
  c.num_return_sequences = 2;
  c.seed = 77;
  auto s1 = hashed_session(10), s2 = hashed_session(10);
  const auto a = generate(s1, {{1, 2}}, c), b = generate(s2, {{1, 2}}, c);
  ASSERT_EQ(a.sequences.size(), 2u);
  EXPECT_EQ(a.padded(), b.padded());
  EXPECT_GE(*a.sequences[0].score, *a.sequences[1].score);
}

}  // namespace
}  // namespace kestrel
