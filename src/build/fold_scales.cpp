// Folds power-of-two attention scales into the Q projection (see packed_weights.h). GPT-2 with head_dim 64
// has scale 1/8, so its attention then does one multiply less per score, with bit-identical results.
#include <cmath>

#include "build/packed_weights.h"

namespace kestrel {

namespace {

bool is_power_of_two(float s) {
  int exp = 0;
  return s > 0.0f && std::frexp(s, &exp) == 0.5f;
}

void take_program_folds(std::vector<Op>& ops, std::vector<ScaleFold>& folds) {
  for (size_t i = 0; i < ops.size(); ++i) {
    Op& attn = ops[i];
    if (attn.kind != OpKind::Attention || attn.scale == 1.0f || !is_power_of_two(attn.scale)) continue;
    // The op right before must be the plain linear writing this attention's input, with Q in its first rows.
    if (i == 0) continue;
    Op& proj = ops[i - 1];
    if (proj.kind != OpKind::Linear || proj.residual || proj.gated || proj.act != Activation::Linear ||
        proj.output != attn.inputs[0])
      continue;
    // Each weight is used by exactly one projection in the plans we emit (per-layer names), so scaling in
    // place cannot leak into another op.
    const int64_t q_rows = attn.heads * attn.head_dim;
    folds.push_back({proj.weights[0], q_rows, attn.scale});
    if (proj.weights.size() > 1) folds.push_back({proj.weights[1], q_rows, attn.scale});
    attn.scale = 1.0f;
  }
}

}  // namespace

std::vector<ScaleFold> take_exact_scale_folds(Plan& plan) {
  std::vector<ScaleFold> folds;
  take_program_folds(plan.encoder, folds);
  take_program_folds(plan.decoder, folds);
  return folds;
}

void apply_scale_fold(const ScaleFold& fold, PackedTensor& tensor) {
  // A weight [out, in] scales its first `rows` rows; a bias [out] its first `rows` entries.
  const int64_t width = tensor.shape.size() == 2 ? tensor.shape[1] : 1;
  std::vector<float>& v = tensor.data.owned();
  for (int64_t i = 0; i < fold.rows * width; ++i) v[size_t(i)] *= fold.scale;
}

int fold_exact_scales(Plan& plan, PackedWeights& packed) {
  int folded = 0;
  for (const ScaleFold& f : take_exact_scale_folds(plan)) {
    apply_scale_fold(f, packed.tensors.at(f.weight));
    // Weight and bias of one projection are one fold of one attention op.
    if (packed.tensors.at(f.weight).shape.size() == 2) ++folded;
  }
  return folded;
}

}  // namespace kestrel
