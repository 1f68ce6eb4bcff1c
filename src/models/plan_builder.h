#pragma once
// Small helpers the model definitions share for writing plans.
#include <string>
#include <utility>
#include <vector>

#include "models/plan.h"

namespace kestrel {

inline void add_weight(Plan& plan, std::string name, Shape shape, std::vector<WeightSource> sources) {
  plan.weights.push_back(WeightSpec{std::move(name), std::move(shape), std::move(sources)});
}

inline Op norm_op(std::string in, std::string out, std::vector<std::string> weights, NormKind kind,
                  double eps) {
  Op op{OpKind::Norm};
  op.inputs = {std::move(in)};
  op.output = std::move(out);
  op.weights = std::move(weights);
  op.norm = kind;
  op.eps = eps;
  return op;
}

inline Op linear_op(std::string in, std::string out, std::vector<std::string> weights, bool residual = false,
                    Activation act = Activation::Linear, bool gated = false) {
  Op op{OpKind::Linear};
  op.inputs = {std::move(in)};
  op.output = std::move(out);
  op.weights = std::move(weights);
  op.residual = residual;
  op.act = act;
  op.gated = gated;
  return op;
}

inline Op attention_op(std::string in, std::string out, int64_t heads, int64_t head_dim, float scale,
                       bool causal, KVSource kv, int64_t slot, std::string bias = {}) {
  Op op{OpKind::Attention};
  op.inputs = {std::move(in)};
  op.output = std::move(out);
  op.heads = heads;
  op.head_dim = head_dim;
  op.scale = scale;
  op.causal = causal;
  op.kv = kv;
  op.slot = slot;
  op.bias = std::move(bias);
  return op;
}

}  // namespace kestrel
