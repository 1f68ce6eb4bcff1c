// libFuzzer target: the whole pytorch_model.bin reader from memory: zip directory, inflate, restricted
// unpickler, and the storage/stride checks that turn pickled tensors into views. Any input must load or fail
// with kestrel::Error; a loaded tensor's bytes must all be readable.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/torch_bin.h"
#include "io/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const kestrel::Weights w = kestrel::TorchBinReader::parse(data, size, "fuzz.bin");
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : w.tensors()) {
      const auto* p = static_cast<const uint8_t*>(t.data);
      if (t.nbytes()) sink = sink ^ p[0] ^ p[t.nbytes() - 1];
    }
  } catch (const kestrel::Error&) {
  }
  return 0;
}
