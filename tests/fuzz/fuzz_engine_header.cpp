// libFuzzer target: the engine file header and index parser (io/engine_file.h). Any input must be accepted or
// rejected with kestrel::Error; an accepted file must only describe sections inside the buffer, so every byte
// of every section is read back.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "io/engine_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    // Without section checksums, so mutations that keep the index intact still reach the range checks.
    const auto contents = kestrel::parse_engine(bytes, "fuzz.kestrel", /*verify_sections=*/false);
    volatile uint8_t sink = 0;
    for (const auto& [name, s] : contents.sections)  // sections are inside the data area
      for (uint64_t i = s.offset; i < s.offset + s.size; ++i) sink = sink ^ data[i];
    kestrel::parse_engine(bytes, "fuzz.kestrel", /*verify_sections=*/true);
  } catch (const kestrel::Error&) {
  }
  return 0;
}
