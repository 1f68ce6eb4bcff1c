// libFuzzer target: the safetensors header parser. Any input must be accepted or rejected with
// kestrel::Error; an accepted header must only describe bytes inside the buffer, so every one of them is read
// back.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto entries = kestrel::parse_safetensors(data, size, "fuzz.safetensors");
    volatile uint8_t sink = 0;
    for (const auto& e : entries)  // tensors never overlap, so this is linear in the input
      for (uint64_t i = e.begin; i < e.end; ++i) sink = sink ^ data[i];
  } catch (const kestrel::Error&) {
  }
  return 0;
}
