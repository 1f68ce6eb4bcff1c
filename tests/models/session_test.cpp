// The CPU Session contract (runtime/session.h) on small random models built in memory:
// batched = unbatched, incremental decoding = one full forward, reorder copies rows, bad input is a clear
// error that leaves the session usable.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "io/weights.h"
#include "runtime/calibration.h"
#include "runtime/engine.h"

namespace kestrel {
namespace {

class RandomWeights {
 public:
  explicit RandomWeights(unsigned seed) : rng_(seed) {}
  void add(const std::string& name, Shape shape, float mean = 0.0f, float stddev = 0.3f) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(size_t(shape_numel(shape)));
    for (auto& x : v) x = d(rng_);
    std::vector<unsigned char> bytes(v.size() * sizeof(float));
    std::memcpy(bytes.data(), v.data(), bytes.size());
    w_.add_owned(name, DType::F32, std::move(shape), std::move(bytes), "random");
  }
  Weights& weights() { return w_; }

 private:
  std::mt19937 rng_;
  Weights w_;
};

constexpr int64_t kVocab = 53;

// fc_scale multiplies the spread of every layer's first FFN weight (its outputs grow with it).
std::unique_ptr<Model> gpt2_model(int64_t n_positions = 40, float fc_scale = 1.0f) {
  const int64_t D = 24, L = 2, F = 40;
  nlohmann::json cfg = {{"model_type", "gpt2"}, {"vocab_size", kVocab}, {"n_positions", n_positions},
                        {"n_embd", D},          {"n_layer", L},         {"n_head", 3},
                        {"n_inner", F}};
  RandomWeights r(1);
  r.add("wte.weight", {kVocab, D});
  r.add("wpe.weight", {n_positions, D});
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    r.add(p + "ln_1.weight", {D}, 1.0f);
    r.add(p + "ln_1.bias", {D});
    r.add(p + "attn.c_attn.weight", {D, 3 * D});
    r.add(p + "attn.c_attn.bias", {3 * D});
    r.add(p + "attn.c_proj.weight", {D, D});
    r.add(p + "attn.c_proj.bias", {D});
    r.add(p + "ln_2.weight", {D}, 1.0f);
    r.add(p + "ln_2.bias", {D});
    r.add(p + "mlp.c_fc.weight", {D, F}, 0.0f, 0.3f * fc_scale);
    r.add(p + "mlp.c_fc.bias", {F});
    r.add(p + "mlp.c_proj.weight", {F, D});
    r.add(p + "mlp.c_proj.bias", {D});
  }
  r.add("ln_f.weight", {D}, 1.0f);
  r.add("ln_f.bias", {D});
  return Model::build(parse_config(cfg, nullptr, "test gpt2"), r.weights());
}

std::unique_ptr<Model> t5_model() {
  const int64_t D = 20, H = 2, K = 6, I = H * K, F = 28, NB = 8, EL = 2, DL = 3;
  nlohmann::json cfg = {{"model_type", "t5"},
                        {"vocab_size", kVocab},
                        {"d_model", D},
                        {"d_kv", K},
                        {"d_ff", F},
                        {"num_heads", H},
                        {"num_layers", EL},
                        {"num_decoder_layers", DL},
                        {"relative_attention_num_buckets", NB},
                        {"relative_attention_max_distance", 12},
                        {"feed_forward_proj", "gated-gelu"},
                        {"decoder_start_token_id", 0}};
  RandomWeights r(2);
  r.add("shared.weight", {kVocab, D});
  auto attention = [&](const std::string& p) {
    for (const char* m : {"q", "k", "v"}) r.add(p + m + ".weight", {I, D});
    r.add(p + "o.weight", {D, I});
  };
  auto ffn = [&](const std::string& p) {
    r.add(p + "DenseReluDense.wi_0.weight", {F, D});
    r.add(p + "DenseReluDense.wi_1.weight", {F, D});
    r.add(p + "DenseReluDense.wo.weight", {D, F});
    r.add(p + "layer_norm.weight", {D}, 1.0f);
  };
  for (const char* stack : {"encoder", "decoder"}) {
    const int64_t layers = std::string(stack) == "encoder" ? EL : DL;
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = std::string(stack) + ".block." + std::to_string(l) + ".";
      attention(p + "layer.0.SelfAttention.");
      r.add(p + "layer.0.layer_norm.weight", {D}, 1.0f);
      if (l == 0) r.add(p + "layer.0.SelfAttention.relative_attention_bias.weight", {NB, H});
      if (std::string(stack) == "decoder") {
        attention(p + "layer.1.EncDecAttention.");
        r.add(p + "layer.1.layer_norm.weight", {D}, 1.0f);
        ffn(p + "layer.2.");
      } else {
        ffn(p + "layer.1.");
      }
    }
    r.add(std::string(stack) + ".final_layer_norm.weight", {D}, 1.0f);
  }
  return Model::build(parse_config(cfg, nullptr, "test t5"), r.weights());
}

std::vector<int64_t> tokens(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = int64_t(rng() % kVocab);
  return v;
}

std::vector<float> row_of(const std::vector<float>& logits, size_t r) {
  return {logits.begin() + r * kVocab, logits.begin() + (r + 1) * kVocab};
}

void expect_same(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(b[i]))) << what << " at " << i;
}

TEST(Gpt2Session, BatchedEqualsUnbatched) {
  auto model = gpt2_model();
  auto batch = open_session(*model, {.threads = 2});
  const TokenRows prompts{tokens(5, 1), tokens(1, 2), tokens(9, 3)};
  const TokenRows next{tokens(2, 4), tokens(1, 5), tokens(3, 6)};
  const auto start = batch->start(prompts);
  const auto step = batch->step(next);
  ASSERT_EQ(start.size(), 3 * size_t(kVocab));
  for (size_t r = 0; r < prompts.size(); ++r) {
    auto alone = open_session(*model, {.threads = 2});
    expect_same(row_of(start, r), alone->start({prompts[r]}), "start");
    expect_same(row_of(step, r), alone->step({next[r]}), "step");
    EXPECT_EQ(batch->decoder_length(int64_t(r)), int64_t(prompts[r].size() + next[r].size()));
  }
}

TEST(Gpt2Session, IncrementalEqualsFullForward) {
  auto model = gpt2_model();
  auto s = open_session(*model);
  const auto ids = tokens(12, 7);
  const auto full = s->start({ids}, {}, true);
  ASSERT_EQ(full.size(), ids.size() * size_t(kVocab));
  s->start({{ids.begin(), ids.begin() + 4}});
  const auto rest = s->step({{ids.begin() + 4, ids.begin() + 9}}, true);
  for (size_t i = 0; i < 5; ++i) expect_same(row_of(rest, i), row_of(full, 4 + i), "multi-token step");
  for (size_t i = 9; i < ids.size(); ++i) expect_same(s->step({{ids[i]}}), row_of(full, i), "single step");
}

TEST(Gpt2Session, ReorderCopiesRows) {
  auto model = gpt2_model();
  auto s = open_session(*model);
  const TokenRows prompts{tokens(3, 8), tokens(6, 9)};
  s->start(prompts);
  s->reorder({1, 1, 0});
  ASSERT_EQ(s->batch_size(), 3);
  const auto out = s->step({{7}, {8}, {9}});
  const TokenRows expect_rows{prompts[1], prompts[1], prompts[0]};
  const int64_t fed[] = {7, 8, 9};
  for (size_t r = 0; r < 3; ++r) {
    auto alone = open_session(*model);
    alone->start({expect_rows[r]});
    expect_same(row_of(out, r), alone->step({{fed[r]}}), "after reorder");
  }
}

TEST(Gpt2Session, BadInputIsAClearErrorAndLeavesTheSessionUsable) {
  auto model = gpt2_model(/*n_positions=*/10);
  auto s = open_session(*model, {.threads = 1, .max_batch = 2});
  EXPECT_THROW(s->start({{}}), Error);
  EXPECT_THROW(s->start({}), Error);
  EXPECT_THROW(s->start({{1, kVocab}}), Error);
  EXPECT_THROW(s->start({{1}, {2}, {3}}), Error);  // max_batch
  EXPECT_THROW(s->start({tokens(11, 1)}), Error);  // n_positions
  const auto before = s->start({tokens(9, 2)});
  EXPECT_THROW(s->step({{1, 2}}), Error);    // would pass n_positions
  EXPECT_THROW(s->step({{1}, {2}}), Error);  // wrong batch size
  EXPECT_THROW(s->step({{-1}}), Error);
  EXPECT_THROW(s->reorder({1}), Error);
  EXPECT_EQ(s->decoder_length(0), 9);
  EXPECT_EQ(s->step({{3}}).size(), size_t(kVocab));
  EXPECT_THROW(open_session(*model, {.device = "cuda"}), Error);
  try {
    s->start({{1, 999}});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

TEST(T5Session, BatchedEqualsUnbatched) {
  auto model = t5_model();
  auto batch = open_session(*model, {.threads = 2});
  ASSERT_TRUE(batch->is_encoder_decoder());
  const TokenRows sources{tokens(7, 10), tokens(20, 11), tokens(1, 12)};
  const TokenRows prefixes{{0}, {0, 5, 6}, {0, 9}};
  const TokenRows next{tokens(1, 13), tokens(2, 14), tokens(15, 15)};
  const auto start = batch->start(sources, prefixes);
  const auto step = batch->step(next);
  for (size_t r = 0; r < sources.size(); ++r) {
    auto alone = open_session(*model);
    expect_same(row_of(start, r), alone->start({sources[r]}, {prefixes[r]}), "start");
    expect_same(row_of(step, r), alone->step({next[r]}), "step");
  }
}

TEST(T5Session, IncrementalEqualsFullForwardAndDefaultPrefix) {
  auto model = t5_model();
  auto s = open_session(*model);
  const auto src = tokens(9, 16);
  std::vector<int64_t> dec{0};
  const auto more = tokens(14, 17);  // past max_distance 12, into the far buckets
  dec.insert(dec.end(), more.begin(), more.end());
  const auto full = s->start({src}, {dec}, true);
  expect_same(s->start({src}), row_of(full, 0), "default prefix is decoder_start_token_id");
  EXPECT_EQ(s->decoder_length(0), 1);
  for (size_t i = 1; i < dec.size(); ++i) expect_same(s->step({{dec[i]}}), row_of(full, i), "step");
  s->reorder({0, 0});
  const auto two = s->step({{4}, {4}});
  expect_same(row_of(two, 0), row_of(two, 1), "reordered copies");
}

TEST(Calibration, MeasuresEveryOpsRange) {
  auto model = gpt2_model();
  const auto ranges = measure_activation_ranges(*model, 1, 16);
  size_t with_output = 0;
  for (const Op& op : model->plan().decoder) {
    if (op.output.empty()) continue;
    ++with_output;
    ASSERT_TRUE(ranges.count(&op)) << op.output;
    EXPECT_TRUE(std::isfinite(ranges.at(&op)) && ranges.at(&op) > 0.0f) << op.output;
  }
  EXPECT_EQ(ranges.size(), with_output);
  // A tame model stays far inside fp16; one whose FFN weights are 1e5x wider leaves it, in that op's output.
  for (const auto& [op, r] : ranges) EXPECT_LT(r, kFp16Max / kFp16Headroom) << op->output;
  auto hot = gpt2_model(40, 1e5f);
  float ffn_peak = 0.0f;
  for (const auto& [op, r] : measure_activation_ranges(*hot, 1, 16))
    if (op->kind == OpKind::Linear && op->output == "f") ffn_peak = std::max(ffn_peak, r);
  EXPECT_GT(ffn_peak, kFp16Max);
}

}  // namespace
}  // namespace kestrel
