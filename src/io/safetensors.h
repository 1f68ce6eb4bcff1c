#pragma once
// safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
// then the tensor bytes. Offsets are relative to the end of the header. The parser takes a byte buffer (not a
// file) so the fuzzer needs no disk; the reader maps the file and hands out zero-copy views.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kestrel {

class Weights;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // absolute byte offsets into the buffer, validated: end - begin == nbytes
};

// Validates the whole header against the buffer; throws kestrel::Error naming `label` (the file) and the
// tensor. Entries come back sorted by name.
std::vector<SafetensorsEntry> parse_safetensors(const unsigned char* data, size_t size,
                                                const std::string& label);

class SafetensorsReader {
 public:
  static Weights load(const std::filesystem::path& file);
};

}  // namespace kestrel
