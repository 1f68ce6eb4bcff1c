#include "generate/generation_config.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace kestrel {
namespace {

TEST(GenerationConfig, ExplicitOptionsOverrideModelDefaults) {
  GenerationDefaults d;
  d.eos_token_ids = {50256};
  d.num_beams = 4;
  d.top_k = 10;
  d.max_new_tokens = 30;
  GenerationOptions o;
  o.num_beams = 2;
  o.seed = 9;
  const auto c = make_generation_config(d, o);
  EXPECT_EQ(c.num_beams, 2);
  EXPECT_EQ(c.top_k, 10);
  EXPECT_EQ(c.max_new_tokens, 30);
  EXPECT_EQ(c.seed, 9u);
  EXPECT_EQ(c.pad_token_id, 50256);  // GPT-2 has no pad id: transformers pads with eos
}

TEST(GenerationConfig, PadAndEarlyStoppingDefaults) {
  GenerationDefaults d;
  d.pad_token_id = 0;
  d.eos_token_ids = {1};
  d.early_stopping = true;
  d.decoder_start_token_id = 0;
  const auto c = make_generation_config(d, {});
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.early_stopping, EarlyStopping::WhenFull);
  EXPECT_EQ(c.decoder_start_token_id, 0);
  GenerationDefaults none;
  EXPECT_FALSE(make_generation_config(none, {}).pad_token_id.has_value());
}

TEST(GenerationConfig, ParsesEarlyStopping) {
  EXPECT_EQ(parse_early_stopping("true", "x"), EarlyStopping::WhenFull);
  EXPECT_EQ(parse_early_stopping("false", "x"), EarlyStopping::Heuristic);
  EXPECT_EQ(parse_early_stopping("never", "x"), EarlyStopping::Never);
  EXPECT_THROW(parse_early_stopping("sometimes", "--early-stopping"), Error);
}

void expect_invalid(const std::function<void(GenerationOptions&)>& set, const std::string& needle) {
  GenerationOptions o;
  set(o);
  try {
    make_generation_config(GenerationDefaults{}, o);
    ADD_FAILURE() << "accepted; expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(GenerationConfig, RejectsBadValues) {
  expect_invalid([](auto& o) { o.num_beams = 0; }, "num_beams");
  expect_invalid([](auto& o) { o.top_p = 0.0; }, "top_p");
  expect_invalid([](auto& o) { o.top_p = 1.5; }, "top_p");
  expect_invalid(
      [](auto& o) {
        o.do_sample = true;
        o.temperature = 0.0;
      },
      "temperature");
  expect_invalid([](auto& o) { o.top_k = -1; }, "top_k");
  expect_invalid(
      [](auto& o) {
        o.num_beams = 2;
        o.num_return_sequences = 3;
      },
      "num_return_sequences (3)");
  expect_invalid([](auto& o) { o.num_return_sequences = 2; }, "greedy");
  expect_invalid([](auto& o) { o.max_new_tokens = -1; }, "max_new_tokens");
  expect_invalid([](auto& o) { o.max_new_tokens = 0; }, "max_new_tokens");
  expect_invalid([](auto& o) { o.min_new_tokens = -2; }, "min_new_tokens");
  expect_invalid([](auto& o) { o.repetition_penalty = 0.0; }, "repetition_penalty");
  expect_invalid([](auto& o) { o.no_repeat_ngram_size = -1; }, "no_repeat_ngram_size");
  // Sampling-only values are not checked when greedy (transformers only warns).
  GenerationOptions o;
  o.temperature = 0.0;
  EXPECT_NO_THROW(make_generation_config(GenerationDefaults{}, o));
}

}  // namespace
}  // namespace kestrel
