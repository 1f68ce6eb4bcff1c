#include "generate/logits_processors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace kestrel {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(RepetitionPenalty, DividesPositiveAndMultipliesNegativeSeenScoresOnce) {
  std::vector<float> s = {2.0f, -1.0f, 3.0f, -4.0f};
  const std::vector<int64_t> history = {0, 1, 1, 1, 99 /* outside the vocab: ignored */};
  apply_repetition_penalty(s, history, 2.0f);
  EXPECT_FLOAT_EQ(s[0], 1.0f);
  EXPECT_FLOAT_EQ(s[1], -2.0f);  // seen three times, penalised once
  EXPECT_FLOAT_EQ(s[2], 3.0f);
  EXPECT_FLOAT_EQ(s[3], -4.0f);
}

TEST(NoRepeatNGram, BansTokensThatCompleteASeenNgram) {
  std::vector<float> s(6, 0.0f);
  // bigrams seen: (1,2) (2,3) (3,1) (1,4) ; last token 1 -> 2 and 4 are banned
  apply_no_repeat_ngram(s, std::vector<int64_t>{1, 2, 3, 1, 4, 1}, 2);
  EXPECT_EQ(s[2], -kInf);
  EXPECT_EQ(s[4], -kInf);
  EXPECT_EQ(s[0], 0.0f);
  EXPECT_EQ(s[1], 0.0f);
  EXPECT_EQ(s[3], 0.0f);
}

TEST(NoRepeatNGram, NothingBannedBeforeAFullNgramExists) {
  std::vector<float> s(4, 1.0f);
  apply_no_repeat_ngram(s, std::vector<int64_t>{1, 1}, 3);
  for (float v : s) EXPECT_EQ(v, 1.0f);
  // Trigram (1,1,1) is seen once the history is 1 1 1, so 1 is banned after "1 1".
  apply_no_repeat_ngram(s, std::vector<int64_t>{1, 1, 1}, 3);
  EXPECT_EQ(s[1], -kInf);
}

TEST(NoRepeatNGram, UnigramBansEverySeenToken) {
  std::vector<float> s(4, 1.0f);
  apply_no_repeat_ngram(s, std::vector<int64_t>{0, 2}, 1);
  EXPECT_EQ(s[0], -kInf);
  EXPECT_EQ(s[2], -kInf);
  EXPECT_EQ(s[1], 1.0f);
}

TEST(MinLength, SuppressesEveryEosOnlyBelowTheMinimum) {
  std::vector<float> s = {1, 2, 3, 4};
  const std::vector<int64_t> eos = {1, 3};
  suppress_eos_below_min_length(s, 4, 5, eos);
  EXPECT_EQ(s[1], -kInf);
  EXPECT_EQ(s[3], -kInf);
  EXPECT_EQ(s[2], 3.0f);
  std::vector<float> t = {1, 2, 3, 4};
  suppress_eos_below_min_length(t, 5, 5, eos);
  EXPECT_EQ(t[1], 2.0f);
}

TEST(TopK, KeepsTheKLargestAndTies) {
  std::vector<float> s = {1, 5, 3, 5, 2};
  apply_top_k(s, 2, 1);
  EXPECT_EQ(s, (std::vector<float>{-kInf, 5, -kInf, 5, -kInf}));
  std::vector<float> t = {1, 5, 3, 4, 2};
  apply_top_k(t, 1, 3);  // min_tokens_to_keep wins
  EXPECT_EQ(t, (std::vector<float>{-kInf, 5, 3, 4, -kInf}));
  std::vector<float> u = {1, 2};
  apply_top_k(u, 10, 1);  // k larger than the vocabulary keeps everything
  EXPECT_EQ(u, (std::vector<float>{1, 2}));
}

TEST(TopP, KeepsSmallestSetAboveTheMass) {
  // probabilities 0.5, 0.25, 0.125, 0.125
  std::vector<float> s = {std::log(0.5f), std::log(0.25f), std::log(0.125f), std::log(0.125f)};
  auto t = s;
  apply_top_p(t, 0.7, 1);  // 0.5 + 0.25 reaches 0.75 > 0.7: keep two
  EXPECT_GT(t[0], -kInf);
  EXPECT_GT(t[1], -kInf);
  EXPECT_EQ(t[2], -kInf);
  EXPECT_EQ(t[3], -kInf);
  t = s;
  apply_top_p(t, 1e-6, 1);  // only the best
  EXPECT_GT(t[0], -kInf);
  EXPECT_EQ(t[1], -kInf);
  t = s;
  apply_top_p(t, 1e-6, 3);  // min_tokens_to_keep
  EXPECT_GT(t[0] + t[1], -kInf);
  EXPECT_EQ((t[2] == -kInf) + (t[3] == -kInf), 1);  // one of the 0.125 ties goes
  t = s;
  apply_top_p(t, 1.0, 1);
  EXPECT_EQ(t, s);
}

TEST(Temperature, ScalesScores) {
  std::vector<float> s = {1, -2};
  apply_temperature(s, 0.5f);
  EXPECT_EQ(s, (std::vector<float>{2, -4}));
}

TEST(Chain, WarpersOnlyWhenSampling) {
  GenerationConfig c;
  c.top_k = 1;
  c.temperature = 2.0;
  std::vector<float> s = {1, 2, 3};
  LogitsProcessorChain{c}(s, std::vector<int64_t>{0}, 0);
  EXPECT_EQ(s, (std::vector<float>{1, 2, 3}));
  c.do_sample = true;
  LogitsProcessorChain{c}(s, std::vector<int64_t>{0}, 0);
  EXPECT_EQ(s, (std::vector<float>{-kInf, -kInf, 1.5f}));
}

TEST(Chain, TransformersOrderPenaltyBeforeTemperature) {
  GenerationConfig c;
  c.do_sample = true;
  c.top_k = 0;
  c.repetition_penalty = 2.0;
  c.temperature = 0.5;
  c.eos_token_ids = {2};
  std::vector<float> s = {4, -1, 3};
  LogitsProcessorChain{c}(s, std::vector<int64_t>{0, 1}, 5);
  EXPECT_FLOAT_EQ(s[0], 4.0f);   // 4 / 2 / 0.5
  EXPECT_FLOAT_EQ(s[1], -4.0f);  // -1 * 2 / 0.5
  EXPECT_EQ(s[2], -kInf);        // eos below min length
}

TEST(Numerics, LogSoftmaxArgmaxTopK) {
  std::vector<float> s = {0, std::log(3.0f)};
  log_softmax_inplace(s);
  EXPECT_NEAR(std::exp(s[0]), 0.25, 1e-6);
  EXPECT_NEAR(std::exp(s[1]), 0.75, 1e-6);
  EXPECT_EQ(argmax(std::vector<float>{1, 3, 3}), 1);
  EXPECT_EQ(top_k_indices(std::vector<float>{1, 3, 2, 3}, 3), (std::vector<int64_t>{1, 3, 2}));
  std::vector<double> p;
  EXPECT_FALSE(softmax(std::vector<float>{-kInf, -kInf}, p));
  EXPECT_TRUE(softmax(std::vector<float>{0, -kInf}, p));
  EXPECT_EQ(p, (std::vector<double>{1.0, 0.0}));
}

}  // namespace
}  // namespace kestrel
