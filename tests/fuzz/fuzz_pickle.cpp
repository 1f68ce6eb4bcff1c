// libFuzzer target: the restricted unpickler for torch.save's data.pkl. Any input must be accepted or
// rejected with kestrel::Error: no crash, leak (self-referencing containers are legal pickle) or unbounded
// recursion.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    for (const auto& t : kestrel::parse_torch_pickle(data, size, "fuzz.pkl"))
      if (t.shape.size() != t.stride.size()) std::abort();  // the parser promises matching ranks
  } catch (const kestrel::Error&) {
  }
  return 0;
}
