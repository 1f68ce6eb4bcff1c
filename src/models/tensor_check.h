#pragma once
// Checks a checkpoint tensor against what the config implies and describes it as a plan weight source.
#include <string>

#include "core/error.h"
#include "io/weights.h"
#include "models/plan.h"

namespace kestrel {

class TensorCheck {
 public:
  explicit TensorCheck(const Weights& w) : w_(w) {}

  // The tensor must exist, be fp32/fp16/bf16/fp64 and have exactly `shape`.
  WeightSource need(const std::string& name, Shape shape, StoredLayout layout) const {
    if (!w_.has(name)) fail("checkpoint " + w_.origin() + ": tensor '" + name + "' is missing");
    const TensorView& t = w_.get(name);
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16 && t.dtype != DType::F64)
      fail("checkpoint " + w_.origin() + ": tensor '" + name + "' has dtype " +
           std::string(dtype_name(t.dtype)) + ", expected a floating-point type");
    if (t.shape != shape)
      fail("checkpoint " + w_.origin() + ": tensor '" + name + "' has shape " + shape_str(t.shape) +
           ", but the config implies " + shape_str(shape));
    return WeightSource{name, layout, std::move(shape)};
  }
  bool has(const std::string& name) const { return w_.has(name); }
  std::string origin() const { return w_.origin(); }

 private:
  const Weights& w_;
};

}  // namespace kestrel
