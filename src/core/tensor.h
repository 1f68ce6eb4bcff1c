#pragma once
// A TensorView is dtype + shape + pointer into memory someone else owns (usually a mapped checkpoint file).
// Row-major, contiguous: every tensor Kestrel reads from a checkpoint is stored that way.
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace kestrel {

using Shape = std::vector<int64_t>;

inline int64_t shape_numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, [](int64_t a, int64_t b) { return a * b; });
}
std::string shape_str(const Shape& s);  // "[768, 2304]"

struct TensorView {
  DType dtype = DType::F32;
  Shape shape;
  const void* data = nullptr;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  template <typename T>
  const T* as() const { return static_cast<const T*>(data); }
};

// Copies any floating tensor into fp32 (the CPU engine's compute type).
std::vector<float> to_float(const TensorView& t);

}  // namespace kestrel
