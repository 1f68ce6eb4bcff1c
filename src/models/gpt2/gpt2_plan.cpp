// GPT-2 (transformers' GPT2LMHeadModel / GPT2Model) as a plan:
//   x = wte[ids] + wpe[positions]
//   per layer: h = ln_1(x); qkv = h·c_attn; a = causal attention; x += a·c_proj
//              h = ln_2(x); x += act(h·c_fc)·mlp.c_proj
//   logits = ln_f(x_last) · lm_headᵀ          (lm_head = wte when tied)
// Conv1D weights are stored [in, out]; c_attn already holds Q, K and V side by side.
#include <cmath>
#include <string>

#include "models/model_plan.h"
#include "models/plan_builder.h"
#include "models/tensor_check.h"

namespace kestrel {

Plan make_gpt2_plan(const GPT2Config& c, const Weights& weights) {
  const TensorCheck ck(weights);
  // GPT2LMHeadModel saves "transformer.h.0...", GPT2Model saves "h.0...".
  std::string prefix;
  if (ck.has("transformer.wte.weight"))
    prefix = "transformer.";
  else if (!ck.has("wte.weight"))
    fail("checkpoint " + ck.origin() +
         ": no GPT-2 token embedding (neither 'transformer.wte.weight' nor 'wte.weight')");

  const int64_t D = c.n_embd, F = c.ffn_dim(), V = c.vocab_size;
  const double eps = c.layer_norm_epsilon;
  Plan plan;
  plan.architecture = "gpt2";
  plan.embed_positions = true;
  plan.max_positions = c.n_positions;
  plan.self_slots = c.n_layer;
  plan.kv_width = D;
  plan.buffers = {{"x", D}, {"h", D}, {"qkv", 3 * D}, {"a", D}, {"f", F}, {"y", D}, {"logits", V}};

  auto vec = [&](const std::string& plan_name, const std::string& tensor, int64_t n) {
    add_weight(plan, plan_name, {n}, {ck.need(prefix + tensor, {n}, StoredLayout::Vector)});
  };
  auto conv1d = [&](const std::string& plan_name, const std::string& tensor, int64_t in, int64_t out) {
    add_weight(plan, plan_name + ".w", {out, in},
               {ck.need(prefix + tensor + ".weight", {in, out}, StoredLayout::InOut)});
    vec(plan_name + ".b", tensor + ".bias", out);
  };

  add_weight(plan, "wte", {V, D}, {ck.need(prefix + "wte.weight", {V, D}, StoredLayout::Table)});
  add_weight(plan, "wpe", {c.n_positions, D},
             {ck.need(prefix + "wpe.weight", {c.n_positions, D}, StoredLayout::Table)});
  Op embed{OpKind::Embed};
  embed.output = "x";
  embed.weights = {"wte", "wpe"};
  plan.decoder.push_back(embed);

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    vec(h + "ln_1.w", h + "ln_1.weight", D);
    vec(h + "ln_1.b", h + "ln_1.bias", D);
    conv1d(h + "attn.c_attn", h + "attn.c_attn", D, 3 * D);
    conv1d(h + "attn.c_proj", h + "attn.c_proj", D, D);
    vec(h + "ln_2.w", h + "ln_2.weight", D);
    vec(h + "ln_2.b", h + "ln_2.bias", D);
    conv1d(h + "mlp.c_fc", h + "mlp.c_fc", D, F);
    conv1d(h + "mlp.c_proj", h + "mlp.c_proj", F, D);

    float scale = 1.0f;
    if (c.scale_attn_weights) scale = float(1.0 / std::sqrt(double(c.head_dim())));
    if (c.scale_attn_by_inverse_layer_idx) scale /= float(l + 1);

    plan.decoder.push_back(norm_op("x", "h", {h + "ln_1.w", h + "ln_1.b"}, NormKind::Layer, eps));
    plan.decoder.push_back(linear_op("h", "qkv", {h + "attn.c_attn.w", h + "attn.c_attn.b"}));
    plan.decoder.push_back(attention_op("qkv", "a", c.n_head, c.head_dim(), scale, true, KVSource::Self, l));
    plan.decoder.push_back(linear_op("a", "x", {h + "attn.c_proj.w", h + "attn.c_proj.b"}, true));
    plan.decoder.push_back(norm_op("x", "h", {h + "ln_2.w", h + "ln_2.b"}, NormKind::Layer, eps));
    plan.decoder.push_back(linear_op("h", "f", {h + "mlp.c_fc.w", h + "mlp.c_fc.b"}, false, c.activation));
    plan.decoder.push_back(linear_op("f", "x", {h + "mlp.c_proj.w", h + "mlp.c_proj.b"}, true));
  }

  vec("ln_f.w", "ln_f.weight", D);
  vec("ln_f.b", "ln_f.bias", D);
  std::string head = "wte";
  if (!c.tie_word_embeddings) {
    if (!ck.has("lm_head.weight"))
      fail("checkpoint " + ck.origin() +
           ": tensor 'lm_head.weight' is missing, and the config says the head is not tied "
           "(tie_word_embeddings: "
           "false)");
    add_weight(plan, "lm_head", {V, D}, {ck.need("lm_head.weight", {V, D}, StoredLayout::OutIn)});
    head = "lm_head";
  }
  Op take{OpKind::TakeOutputs};
  take.inputs = {"x"};
  take.output = "y";
  plan.decoder.push_back(take);
  plan.decoder.push_back(norm_op("y", "y", {"ln_f.w", "ln_f.b"}, NormKind::Layer, eps));
  plan.decoder.push_back(linear_op("y", "logits", {head}));
  return plan;
}

}  // namespace kestrel
