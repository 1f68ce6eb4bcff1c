// Greedy decoding and sampling against a fake session whose logits are a hash of the row's tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "fake_session.h"
#include "generate/generator.h"
#include "generate/logits_processors.h"

namespace kestrel {
namespace {

using testing::FakeSession;
using testing::hashed_logits;

constexpr int64_t kVocab = 32;

FakeSession hashed_session(int64_t vocab = kVocab, bool encdec = false) {
  return FakeSession(
      vocab, [vocab](const auto& e, const auto& d) { return hashed_logits(e, d, vocab); }, encdec);
}

GenerationConfig greedy(int64_t max_new) {
  GenerationConfig c;
  c.max_new_tokens = max_new;
  return c;
}

// Plain argmax continuation computed straight from the logits function.
std::vector<int64_t> reference_greedy(std::vector<int64_t> seq, int64_t n, int64_t eos = -1) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = argmax(hashed_logits({}, seq, kVocab));
    out.push_back(t);
    seq.push_back(t);
    if (t == eos) break;
  }
  return out;
}

TEST(Greedy, FollowsTheArgmax) {
  auto s = hashed_session();
  const auto r = generate(s, {{1, 2, 3}}, greedy(8));
  ASSERT_EQ(r.sequences.size(), 1u);
  EXPECT_EQ(r.sequences[0].tokens, reference_greedy({1, 2, 3}, 8));
  EXPECT_EQ(s.starts, 1);
  EXPECT_EQ(s.steps, 7);  // the last token is never fed back
}

TEST(Greedy, BatchOfRaggedPromptsEqualsEachAlone) {
  const TokenRows prompts = {{5}, {1, 2, 3, 4, 5, 6}, {7, 7}};
  auto batch_session = hashed_session();
  auto c = greedy(6);
  c.eos_token_ids = {reference_greedy({7, 7}, 3)[2]};  // make the third prompt stop early
  c.pad_token_id = 0;
  const auto batched = generate(batch_session, prompts, c);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = hashed_session();
    const auto single = generate(alone, {prompts[i]}, c);
    EXPECT_EQ(batched.sequences[i].tokens, single.sequences[0].tokens) << "prompt " << i;
    EXPECT_EQ(batched.sequences[i].prompt_index, int64_t(i));
  }
  EXPECT_TRUE(batched.sequences[2].ended_with_eos);
  EXPECT_EQ(batched.sequences[2].tokens.size(), 3u);
}

TEST(Greedy, StopsAtAnyEosAndFinishedRowsLeaveTheSession) {
  const auto ref = reference_greedy({4}, 6);
  auto c = greedy(6);
  c.eos_token_ids = {999, ref[1]};  // 999 lies outside the vocabulary and never matches
  c.pad_token_id = 999;
  const auto expected = reference_greedy({4}, 6, ref[1]);
  auto s = hashed_session();
  const auto r = generate(s, {{4}, {1, 2}}, c);
  EXPECT_EQ(r.sequences[0].tokens, expected);
  EXPECT_TRUE(r.sequences[0].ended_with_eos);
  EXPECT_EQ(r.sequences[1].tokens, reference_greedy({1, 2}, 6, ref[1]));
  // Every step runs only the rows still going.
  ASSERT_EQ(s.batch_history.size(), std::max(r.sequences[0].tokens.size(), r.sequences[1].tokens.size()));
  for (size_t step = 1; step < s.batch_history.size(); ++step) {
    int64_t going = 0;
    for (const auto& seq : r.sequences) going += seq.tokens.size() > step ? 1 : 0;
    EXPECT_EQ(s.batch_history[step], going) << "step " << step;
  }
  // transformers' rectangular output pads finished rows.
  const auto padded = r.padded();
  ASSERT_EQ(padded[0].size(), padded[1].size());
  for (size_t i = expected.size(); i < padded[0].size(); ++i) EXPECT_EQ(padded[0][i], 999);
}

TEST(Greedy, MinNewTokensSuppressesEos) {
  const auto ref = reference_greedy({4}, 1);
  auto c = greedy(5);
  c.eos_token_ids = {ref[0]};
  auto s1 = hashed_session();
  EXPECT_EQ(generate(s1, {{4}}, c).sequences[0].tokens.size(), 1u);
  c.min_new_tokens = 3;
  auto s2 = hashed_session();
  const auto r = generate(s2, {{4}}, c);
  ASSERT_GE(r.sequences[0].tokens.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NE(r.sequences[0].tokens[i], ref[0]);
}

TEST(Greedy, MinLengthCountsThePrompt) {
  const auto ref = reference_greedy({4, 4}, 1);
  auto c = greedy(5);
  c.eos_token_ids = {ref[0]};
  c.min_length = 4;  // total length: prompt (2) + 2 new tokens before eos is allowed
  auto s = hashed_session();
  const auto r = generate(s, {{4, 4}}, c);
  ASSERT_GE(r.sequences[0].tokens.size(), 2u);
  EXPECT_NE(r.sequences[0].tokens[0], ref[0]);
  EXPECT_NE(r.sequences[0].tokens[1], ref[0]);
}

TEST(Greedy, NoRepeatNgramNeverRepeatsABigram) {
  // A model that always prefers token 3, then 4: without the constraint it loops 3 3 3 ...
  FakeSession s(8, [](const auto&, const auto&) { return std::vector<float>{0, 0, 0, 5, 4, 3, 2, 1}; });
  auto c = greedy(10);
  c.no_repeat_ngram_size = 2;
  const auto r = generate(s, {{3}}, c);
  std::vector<int64_t> seq = {3};
  seq.insert(seq.end(), r.sequences[0].tokens.begin(), r.sequences[0].tokens.end());
  std::map<std::pair<int64_t, int64_t>, int> seen;
  for (size_t i = 0; i + 1 < seq.size(); ++i)
    EXPECT_EQ(++seen[std::make_pair(seq[i], seq[i + 1])], 1) << "at " << i;
}

TEST(Greedy, RepetitionPenaltyMovesOffRepeatedToken) {
  FakeSession s(4, [](const auto&, const auto&) { return std::vector<float>{0, 2.0f, 1.5f, 0}; });
  auto c = greedy(2);
  c.repetition_penalty = 2.0;
  const auto r = generate(s, {{0}}, c);
  EXPECT_EQ(r.sequences[0].tokens, (std::vector<int64_t>{1, 2}));  // 2.0/2 = 1.0 < 1.5
}

TEST(Greedy, StreamsOneTokenPerStepInOrder) {
  auto s = hashed_session();
  std::vector<std::vector<int64_t>> streamed(2);
  const auto r = generate(s, {{1}, {2, 3}}, greedy(5), [&](int64_t seq, std::span<const int64_t> t) {
    ASSERT_EQ(t.size(), 1u);
    streamed[size_t(seq)].push_back(t[0]);
  });
  EXPECT_EQ(streamed[0], r.sequences[0].tokens);
  EXPECT_EQ(streamed[1], r.sequences[1].tokens);
}

TEST(Greedy, EncoderDecoderStartsFromTheDecoderStartToken) {
  auto s = hashed_session(kVocab, /*encdec=*/true);
  auto c = greedy(4);
  c.decoder_start_token_id = 0;
  const auto r = generate(s, {{9, 8, 7}}, c);
  std::vector<int64_t> dec = {0}, expected;
  for (int i = 0; i < 4; ++i) {
    expected.push_back(argmax(hashed_logits({9, 8, 7}, dec, kVocab)));
    dec.push_back(expected.back());
  }
  EXPECT_EQ(r.sequences[0].tokens, expected);
}

TEST(Greedy, DefaultLengthIsTwentyNewTokensClampedToPositions) {
  FakeSession s(
      kVocab, [](const auto& e, const auto& d) { return hashed_logits(e, d, kVocab); }, false, 24);
  GenerationConfig c;  // no max_new_tokens, default max_length 20
  const auto r = generate(s, {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}, c);
  EXPECT_EQ(r.sequences[0].tokens.size(), 14u);  // min(10 + 20, 24) - 10
  c.max_length_is_default = false;
  c.max_length = 13;
  auto s2 = hashed_session();
  EXPECT_EQ(generate(s2, {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}, c).sequences[0].tokens.size(), 3u);
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(e.kind(), Error::Kind::User);
  }
}

TEST(GenerateErrors, BadPromptsAndLengths) {
  auto s = hashed_session();
  expect_error([&] { generate(s, {}, greedy(2)); }, "no prompts");
  expect_error([&] { generate(s, {{1}, {}}, greedy(2)); }, "prompt 1 is empty");
  expect_error([&] { generate(s, {{1, kVocab}}, greedy(2)); }, "outside the vocabulary");
  expect_error([&] { generate(s, {{-1}}, greedy(2)); }, "outside the vocabulary");
  FakeSession small(
      kVocab, [](const auto& e, const auto& d) { return hashed_logits(e, d, kVocab); }, false, 4);
  expect_error([&] { generate(small, {{1, 2, 3, 4, 5}}, greedy(1)); }, "at most 4 positions");
  expect_error([&] { generate(small, {{1, 2, 3}}, greedy(3)); }, "lower max_new_tokens");
  EXPECT_NO_THROW(generate(small, {{1, 2, 3}}, greedy(2)));  // 4 positions fed, the 5th token never is
  GenerationConfig c;
  c.max_length_is_default = false;
  c.max_length = 3;
  expect_error([&] { generate(s, {{1, 2, 3}}, c); }, "max_length is 3");
}

// ---- sampling ----

GenerationConfig sampling(int64_t max_new, uint64_t seed) {
  GenerationConfig c;
  c.do_sample = true;
  c.max_new_tokens = max_new;
  c.seed = seed;
  c.top_k = 0;
  return c;
}

TEST(Sampling, DeterministicForASeed) {
  auto run = [](uint64_t seed) {
    auto s = hashed_session();
    return generate(s, {{1, 2}, {3}}, sampling(12, seed)).padded();
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

TEST(Sampling, TopKOneAndTinyTopPAreGreedy) {
  auto s0 = hashed_session();
  const auto expected = generate(s0, {{1, 2}}, greedy(10)).sequences[0].tokens;
  for (uint64_t seed : {1, 2, 3}) {
    auto c = sampling(10, seed);
    c.top_k = 1;
    auto s1 = hashed_session();
    EXPECT_EQ(generate(s1, {{1, 2}}, c).sequences[0].tokens, expected);
    c.top_k = 0;
    c.top_p = 1e-7;
    auto s2 = hashed_session();
    EXPECT_EQ(generate(s2, {{1, 2}}, c).sequences[0].tokens, expected);
  }
}

// A fixed next-token distribution: softmax of {0, 1, 2, 3}.
FakeSession fixed_distribution_session() {
  return FakeSession(4, [](const auto&, const auto&) { return std::vector<float>{0, 1, 2, 3}; });
}

std::vector<double> first_token_frequencies(GenerationConfig c, int n) {
  auto s = fixed_distribution_session();
  c.num_return_sequences = n;
  const auto r = generate(s, {{0}}, c);
  std::vector<int> counts(4, 0);
  for (const auto& seq : r.sequences) ++counts[size_t(seq.tokens[0])];
  std::vector<double> f;
  for (int k : counts) f.push_back(double(k) / n);
  return f;
}

TEST(Sampling, EmpiricalFrequenciesMatchTheSoftmax) {
  const int n = 20000;
  const auto f = first_token_frequencies(sampling(1, 11), n);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += std::exp(double(i));
  for (int i = 0; i < 4; ++i) {
    const double p = std::exp(double(i)) / z;
    EXPECT_NEAR(f[size_t(i)], p, 5 * std::sqrt(p * (1 - p) / n)) << "token " << i;
  }
}

TEST(Sampling, TemperatureSharpensOrFlattens) {
  const int n = 5000;
  auto cold = sampling(1, 3), hot = sampling(1, 3);
  cold.temperature = 0.25;
  hot.temperature = 4.0;
  const auto fc = first_token_frequencies(cold, n), fh = first_token_frequencies(hot, n);
  EXPECT_GT(fc[3], 0.97);  // softmax({0,4,8,12}): 0.98
  EXPECT_LT(fh[3], 0.40);  // softmax({0,.25,.5,.75}): 0.32
  EXPECT_GT(fh[0], 0.12);
}

TEST(Sampling, TopKAndTopPRestrictTheSupport) {
  auto c = sampling(1, 8);
  c.top_k = 2;
  auto f = first_token_frequencies(c, 2000);
  EXPECT_EQ(f[0] + f[1], 0.0);
  EXPECT_GT(f[2], 0.1);
  c.top_k = 0;
  c.top_p = 0.6;  // probabilities .032 .087 .237 .644: only token 3 is needed to pass .6
  f = first_token_frequencies(c, 2000);
  EXPECT_EQ(f[3], 1.0);
  c.top_p = 0.7;  // needs tokens 3 and 2
  f = first_token_frequencies(c, 2000);
  EXPECT_EQ(f[0] + f[1], 0.0);
  EXPECT_GT(f[2], 0.2);
}

TEST(Sampling, ReturnSequencesArePromptMajorAndShareOnePrefill) {
  auto s = hashed_session();
  auto c = sampling(4, 1);
  c.num_return_sequences = 3;
  const auto r = generate(s, {{1}, {2}}, c);
  ASSERT_EQ(r.sequences.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(r.sequences[i].prompt_index, int64_t(i / 3));
  EXPECT_EQ(s.batch_history.front(), 2);  // start() ran once per prompt
  EXPECT_EQ(s.batch_history[1], 6);
}

TEST(Sampling, EverythingFilteredIsAClearError) {
  FakeSession s(2, [](const auto&, const auto&) { return std::vector<float>{0, 0}; });
  auto c = sampling(4, 1);
  c.no_repeat_ngram_size = 1;  // bans 0 and 1 once both are seen
  EXPECT_THROW(generate(s, {{0, 1}}, c), Error);
}

}  // namespace
}  // namespace kestrel
