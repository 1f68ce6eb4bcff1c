#include "core/tensor.h"

#include "core/error.h"

namespace kestrel {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::vector<float> to_float(const TensorView& t) {
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  switch (t.dtype) {
    case DType::F32:
      std::copy(t.as<float>(), t.as<float>() + n, out.begin());
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(t.as<uint16_t>()[i]);
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(t.as<uint16_t>()[i]);
      break;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) out[i] = float(t.as<double>()[i]);
      break;
    default:
      fail("cannot convert a " + std::string(dtype_name(t.dtype)) + " tensor to float");
  }
  return out;
}

}  // namespace kestrel
