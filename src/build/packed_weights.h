#pragma once
// build/: the passes between a model's plan and a backend. For the CPU backend:
//  - pack_weights_cpu: every plan weight as one contiguous fp32 array in the layout the CPU kernels want
//    (linear weights [out, in], sources converted from fp16/bf16, Conv1D [in, out] transposed, fused weights
//    stacked), so the checkpoint files can be unmapped afterwards;
//  - fold_exact_scales: an attention score scale that is a power of two is moved into the Q rows of the
//  weight
//    (and bias) producing Q: multiplying by 2^k is exact in floating point, so the result is unchanged.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/weights.h"
#include "models/plan.h"

namespace kestrel {

// A packed tensor's values: owned (packed in memory) or a read-only view into a mapped engine file, which
// `keep_alive` holds open. Kernels only read data()/size(); only build passes write, and only owned values.
class PackedValues {
 public:
  PackedValues() = default;
  PackedValues(std::vector<float> owned) : owned_(std::move(owned)) {}  // NOLINT: implicit, like the vector
  static PackedValues view(const float* data, size_t size, std::shared_ptr<const void> keep_alive) {
    PackedValues v;
    v.view_ = data;
    v.view_size_ = size;
    v.keep_alive_ = std::move(keep_alive);
    return v;
  }
  bool is_view() const { return view_ != nullptr; }
  const float* data() const { return view_ ? view_ : owned_.data(); }
  size_t size() const { return view_ ? view_size_ : owned_.size(); }
  const float* begin() const { return data(); }
  const float* end() const { return data() + size(); }
  const float& operator[](size_t i) const { return data()[i]; }
  std::vector<float>& owned();  // internal_error on a view: mapped weights are immutable

 private:
  std::vector<float> owned_;
  const float* view_ = nullptr;
  size_t view_size_ = 0;
  std::shared_ptr<const void> keep_alive_;
};

struct PackedTensor {
  Shape shape;
  PackedValues data;
};

struct PackedWeights {
  std::map<std::string, PackedTensor> tensors;
  const PackedTensor& get(const std::string& name) const;  // internal_error when absent
  size_t bytes() const;
};

PackedWeights pack_weights_cpu(const Plan& plan, const Weights& weights);
// One weight of the plan, packed alone: lets an engine build stream tensors instead of holding them all.
PackedTensor pack_weight_cpu(const WeightSpec& spec, const Weights& weights);
// Returns how many attention ops had their scale folded.
int fold_exact_scales(Plan& plan, PackedWeights& packed);

// fold_exact_scales in two halves, for builds that pack one weight at a time: take_exact_scale_folds marks the
// plan's foldable attention ops as scale 1 and returns what to multiply; apply_scale_fold does it to one weight.
struct ScaleFold {
  std::string weight;  // a Q projection's weight or bias
  int64_t rows = 0;    // its leading rows (the Q part) are multiplied
  float scale = 1.0f;
};
std::vector<ScaleFold> take_exact_scale_folds(Plan& plan);
void apply_scale_fold(const ScaleFold& fold, PackedTensor& tensor);

}  // namespace kestrel
