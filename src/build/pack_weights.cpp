#include <cstring>

#include "build/packed_weights.h"
#include "core/error.h"

namespace kestrel {

const PackedTensor& PackedWeights::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) internal_error("packed weights have no '" + name + "'");
  return it->second;
}

std::vector<float>& PackedValues::owned() {
  if (view_) internal_error("packed weights mapped from an engine file are read-only");
  return owned_;
}

size_t PackedWeights::bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : tensors) n += t.data.size() * sizeof(float);
  return n;
}

namespace {

// Appends one source to `out` in [out, in] order.
void append_source(const WeightSource& src, const Weights& weights, std::vector<float>& out) {
  const std::vector<float> f = to_float(weights.get(src.tensor));
  if (src.layout != StoredLayout::InOut) {
    out.insert(out.end(), f.begin(), f.end());
    return;
  }
  const int64_t in = src.shape[0], o = src.shape[1];
  const size_t base = out.size();
  out.resize(base + f.size());
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < o; ++j) out[base + size_t(j * in + i)] = f[size_t(i * o + j)];
}

}  // namespace

PackedTensor pack_weight_cpu(const WeightSpec& spec, const Weights& weights) {
  std::vector<float> values;
  values.reserve(size_t(shape_numel(spec.shape)));
  for (const WeightSource& src : spec.sources) append_source(src, weights, values);
  if (int64_t(values.size()) != shape_numel(spec.shape))
    internal_error("weight '" + spec.name + "': sources hold " + std::to_string(values.size()) +
                   " values, the plan says " + shape_str(spec.shape));
  PackedTensor t;
  t.shape = spec.shape;
  t.data = std::move(values);
  return t;
}

PackedWeights pack_weights_cpu(const Plan& plan, const Weights& weights) {
  PackedWeights packed;
  for (const WeightSpec& spec : plan.weights) packed.tensors.emplace(spec.name, pack_weight_cpu(spec, weights));
  return packed;
}

}  // namespace kestrel
