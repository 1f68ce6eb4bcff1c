// T5 (transformers' T5ForConditionalGeneration) as a plan.
//   encoder: x = shared[ids]; bias = relative-position bias (bidirectional buckets, block 0's table, shared
//   by all
//            layers); per layer: x += o(attn(rms(x)) + bias); x += ffn(rms(x)); enc = final_rms(x);
//            then, for every decoder layer, [K|V] = enc · [k; v]ᵀ is stored once as that layer's cross cache.
//   decoder: x = shared[ids]; bias = causal buckets; per layer: self-attention (cached), cross-attention over
//   the
//            stored K/V (no bias), ffn; logits = final_rms(x_last) [* d_model^-0.5] · headᵀ.
// No score scaling (T5 folds it into its initialisation). Q, K, V are packed into one [3·inner, d_model]
// weight, cross K and V into one [2·inner, d_model] weight, gated FFNs' wi_0 and wi_1 into one [2·d_ff,
// d_model] weight.
#include <cmath>
#include <string>

#include "models/model_plan.h"
#include "models/plan_builder.h"
#include "models/tensor_check.h"

namespace kestrel {

namespace {

struct T5Builder {
  const T5Config& c;
  const TensorCheck& ck;
  Plan& plan;

  WeightSource linear_src(const std::string& tensor, int64_t out, int64_t in) const {
    return ck.need(tensor, {out, in}, StoredLayout::OutIn);
  }
  void vec(const std::string& name, const std::string& tensor, int64_t n) {
    add_weight(plan, name, {n}, {ck.need(tensor, {n}, StoredLayout::Vector)});
  }

  // Self-attention block: x += o(attention(rms(x))).
  void self_attention(std::vector<Op>& ops, const std::string& p, int64_t slot, bool decoder) {
    const int64_t D = c.d_model, I = c.inner_dim();
    const std::string a = p + "layer.0.SelfAttention.";
    vec(p + "ln0", p + "layer.0.layer_norm.weight", D);
    add_weight(plan, p + "qkv", {3 * I, D},
               {linear_src(a + "q.weight", I, D), linear_src(a + "k.weight", I, D),
                linear_src(a + "v.weight", I, D)});
    add_weight(plan, p + "o", {D, I}, {linear_src(a + "o.weight", D, I)});
    ops.push_back(norm_op("x", "h", {p + "ln0"}, NormKind::RMS, c.layer_norm_epsilon));
    ops.push_back(linear_op("h", "qkv", {p + "qkv"}));
    ops.push_back(attention_op("qkv", "a", c.num_heads, c.d_kv, 1.0f, decoder,
                               decoder ? KVSource::Self : KVSource::Local, decoder ? slot : -1,
                               decoder ? "dec_bias" : "enc_bias"));
    ops.push_back(linear_op("a", "x", {p + "o"}, true));
  }

  void cross_attention(std::vector<Op>& ops, const std::string& p, int64_t slot) {
    const int64_t D = c.d_model, I = c.inner_dim();
    const std::string a = p + "layer.1.EncDecAttention.";
    vec(p + "ln1", p + "layer.1.layer_norm.weight", D);
    add_weight(plan, p + "cross_q", {I, D}, {linear_src(a + "q.weight", I, D)});
    add_weight(plan, p + "cross_kv", {2 * I, D},
               {linear_src(a + "k.weight", I, D), linear_src(a + "v.weight", I, D)});
    add_weight(plan, p + "cross_o", {D, I}, {linear_src(a + "o.weight", D, I)});
    ops.push_back(norm_op("x", "h", {p + "ln1"}, NormKind::RMS, c.layer_norm_epsilon));
    ops.push_back(linear_op("h", "q", {p + "cross_q"}));
    ops.push_back(attention_op("q", "a", c.num_heads, c.d_kv, 1.0f, false, KVSource::Cross, slot));
    ops.push_back(linear_op("a", "x", {p + "cross_o"}, true));
  }

  void feed_forward(std::vector<Op>& ops, const std::string& p, int layer_index) {
    const int64_t D = c.d_model, F = c.d_ff;
    const std::string l = p + "layer." + std::to_string(layer_index) + ".";
    const std::string ff = l + "DenseReluDense.";
    vec(p + "ln_ff", l + "layer_norm.weight", D);
    if (c.gated_ffn)
      add_weight(plan, p + "wi", {2 * F, D},
                 {linear_src(ff + "wi_0.weight", F, D), linear_src(ff + "wi_1.weight", F, D)});
    else
      add_weight(plan, p + "wi", {F, D}, {linear_src(ff + "wi.weight", F, D)});
    add_weight(plan, p + "wo", {D, F}, {linear_src(ff + "wo.weight", D, F)});
    ops.push_back(norm_op("x", "h", {p + "ln_ff"}, NormKind::RMS, c.layer_norm_epsilon));
    ops.push_back(linear_op("h", "f", {p + "wi"}, false, c.activation, c.gated_ffn));
    ops.push_back(linear_op("f", "x", {p + "wo"}, true));
  }

  void position_bias(std::vector<Op>& ops, const std::string& stack, bool bidirectional,
                     const std::string& out) {
    const std::string t = stack + ".block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    add_weight(plan, stack + ".rel_bias", {c.relative_attention_num_buckets, c.num_heads},
               {ck.need(t, {c.relative_attention_num_buckets, c.num_heads}, StoredLayout::Table)});
    Op op{OpKind::PositionBias};
    op.output = out;
    op.weights = {stack + ".rel_bias"};
    op.heads = c.num_heads;
    op.bidirectional = bidirectional;
    op.num_buckets = c.relative_attention_num_buckets;
    op.max_distance = c.relative_attention_max_distance;
    ops.push_back(op);
  }
};

}  // namespace

Plan make_t5_plan(const T5Config& c, const Weights& weights) {
  const TensorCheck ck(weights);
  const int64_t D = c.d_model, I = c.inner_dim(), V = c.vocab_size;
  // The log-spaced buckets divide by log(max_distance / max_exact), with max_exact = num_buckets / 2 for the
  // decoder (num_buckets / 4 for the encoder): settings outside this range have no defined bucketing.
  if (c.relative_attention_num_buckets < 4 ||
      c.relative_attention_max_distance <= c.relative_attention_num_buckets / 2)
    fail("T5 config: relative_attention_num_buckets (" + std::to_string(c.relative_attention_num_buckets) +
         ") must be >= 4 and relative_attention_max_distance (" +
         std::to_string(c.relative_attention_max_distance) + ") greater than num_buckets / 2");
  Plan plan;
  plan.architecture = "t5";
  plan.self_slots = c.num_decoder_layers;
  plan.cross_slots = c.num_decoder_layers;
  plan.kv_width = I;
  plan.buffers = {{"x", D},
                  {"h", D},
                  {"qkv", 3 * I},
                  {"q", I},
                  {"a", I},
                  {"f", c.d_ff},
                  {"enc", D},
                  {"ckv", 2 * I},
                  {"y", D},
                  {"logits", V},
                  {"enc_bias", c.num_heads},
                  {"dec_bias", c.num_heads}};
  T5Builder b{c, ck, plan};

  // transformers ties both stacks' embed_tokens to shared.weight; a checkpoint may carry either name.
  const std::string embed_tensor = ck.has("shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight";
  add_weight(plan, "shared", {V, D}, {ck.need(embed_tensor, {V, D}, StoredLayout::Table)});
  Op embed{OpKind::Embed};
  embed.output = "x";
  embed.weights = {"shared"};

  plan.encoder.push_back(embed);
  b.position_bias(plan.encoder, "encoder", true, "enc_bias");
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "encoder.block." + std::to_string(l) + ".";
    b.self_attention(plan.encoder, p, -1, false);
    b.feed_forward(plan.encoder, p, 1);
  }
  b.vec("encoder.final_norm", "encoder.final_layer_norm.weight", D);
  plan.encoder.push_back(norm_op("x", "enc", {"encoder.final_norm"}, NormKind::RMS, c.layer_norm_epsilon));

  plan.decoder.push_back(embed);
  b.position_bias(plan.decoder, "decoder", false, "dec_bias");
  for (int64_t l = 0; l < c.num_decoder_layers; ++l) {
    const std::string p = "decoder.block." + std::to_string(l) + ".";
    b.self_attention(plan.decoder, p, l, true);
    b.cross_attention(plan.decoder, p, l);
    b.feed_forward(plan.decoder, p, 2);
    // The encoder program ends by filling this layer's cross-attention cache.
    plan.encoder.push_back(linear_op("enc", "ckv", {p + "cross_kv"}));
    Op store{OpKind::StoreKV};
    store.inputs = {"ckv"};
    store.slot = l;
    plan.encoder.push_back(store);
  }

  b.vec("decoder.final_norm", "decoder.final_layer_norm.weight", D);
  Op take{OpKind::TakeOutputs};
  take.inputs = {"x"};
  take.output = "y";
  plan.decoder.push_back(take);
  Op final_norm = norm_op("y", "y", {"decoder.final_norm"}, NormKind::RMS, c.layer_norm_epsilon);
  // transformers (T5 v1.0 and configs with scale_decoder_outputs) rescales before the head.
  if (c.scale_decoder_outputs) final_norm.out_scale = float(std::pow(double(D), -0.5));
  plan.decoder.push_back(final_norm);
  // transformers 5 loads lm_head.weight when the checkpoint stores it and otherwise ties it to shared.weight.
  std::string head = "shared";
  if (ck.has("lm_head.weight")) {
    add_weight(plan, "lm_head", {V, D}, {ck.need("lm_head.weight", {V, D}, StoredLayout::OutIn)});
    head = "lm_head";
  }
  plan.decoder.push_back(linear_op("y", "logits", {head}));
  return plan;
}

}  // namespace kestrel
