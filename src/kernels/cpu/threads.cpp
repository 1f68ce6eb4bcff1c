// One knob for all compute threads: OpenMP runs our loops and oneDNN's GEMMs (it uses the same OpenMP runtime),
// so the two never compete for cores.
#include <omp.h>

#include "kernels/cpu/ops.h"

namespace kestrel::cpu {

void set_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

}  // namespace kestrel::cpu
