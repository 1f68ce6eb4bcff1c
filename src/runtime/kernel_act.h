#pragma once
// A plan's Activation as the kernels' Act, for every backend's session.
#include "kernels/act.h"
#include "models/plan.h"

namespace kestrel {

kernels::Act to_kernel_act(Activation a);

}  // namespace kestrel
