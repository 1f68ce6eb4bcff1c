// Element-wise activations, written as transformers defines them (activations.py).
#include <cmath>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

float activate(Act act, float x) {
  switch (act) {
    case Act::Identity:
      return x;
    case Act::GeluTanh: {
      // gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))
      constexpr float k = 0.7978845608028654f;
      return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }
    case Act::GeluErf:
      return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
    case Act::QuickGelu:
      return x / (1.0f + std::exp(-1.702f * x));
    case Act::Relu:
      return x > 0.0f ? x : 0.0f;
    case Act::Silu:
      return x / (1.0f + std::exp(-x));
    case Act::Tanh:
      return std::tanh(x);
    case Act::Sigmoid:
      return 1.0f / (1.0f + std::exp(-x));
  }
  return x;
}

}  // namespace kestrel::cpu
