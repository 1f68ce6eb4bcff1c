#pragma once
// The activations every kernel backend implements (kernels/cpu/activation.cpp, kernels/cuda/device_math.cuh),
// one enum for all of them so the runtime maps a plan's Activation onto kernels once (runtime/kernel_act.h).

namespace kestrel::kernels {

enum class Act { Identity, GeluTanh, GeluErf, QuickGelu, Relu, Silu, Tanh, Sigmoid };

}  // namespace kestrel::kernels
