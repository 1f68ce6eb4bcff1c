#pragma once
// pytorch_model.bin as written by torch.save (torch >= 1.6): a zip holding <archive>/data.pkl (the state
// dict, read by the restricted unpickler in torch_pickle.h), <archive>/data/<key> (one entry per storage) and
// <archive>/byteorder. Contiguous tensors in stored entries are zero-copy views; strided ones and those in
// deflated entries are copied, row-major, into memory the Weights own.
#include <cstddef>
#include <filesystem>
#include <string>

namespace kestrel {

class Weights;

class TorchBinReader {
 public:
  static Weights load(const std::filesystem::path& file);
  // The same from memory (the fuzzer's entry point): views point into `data`, which must outlive the result.
  static Weights parse(const unsigned char* data, size_t size, const std::string& label);
};

}  // namespace kestrel
