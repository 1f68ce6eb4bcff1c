#include "runtime/kernel_act.h"

#include "core/error.h"

namespace kestrel {

kernels::Act to_kernel_act(Activation a) {
  using kernels::Act;
  switch (a) {
    case Activation::GeluTanh:
      return Act::GeluTanh;
    case Activation::GeluErf:
      return Act::GeluErf;
    case Activation::QuickGelu:
      return Act::QuickGelu;
    case Activation::Relu:
      return Act::Relu;
    case Activation::Silu:
      return Act::Silu;
    case Activation::Tanh:
      return Act::Tanh;
    case Activation::Sigmoid:
      return Act::Sigmoid;
    case Activation::Linear:
      return Act::Identity;
  }
  internal_error("unknown activation");
}

}  // namespace kestrel
