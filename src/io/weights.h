#pragma once
// All tensors of a checkpoint folder, by their Hugging Face names, as views into memory-mapped files.
//  - model.safetensors, or model.safetensors.index.json + shards: zero-copy views into the mapped files;
//  - pytorch_model.bin (+ pytorch_model.bin.index.json + shards): torch.save's zip + pickle format, read by a
//    restricted unpickler that only rebuilds tensors; stored (uncompressed) entries are viewed in place.
// Every structural problem (truncated file, bad header, out-of-range offsets, unknown dtype, a pickle opcode
// or global outside the safe subset) is a kestrel::Error naming the file and the problem.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace kestrel {

class Weights {
 public:
  // Loads whichever format the folder holds (safetensors preferred, as transformers does).
  static Weights load(const std::filesystem::path& dir);
  // Single files, for tests and tools.
  static Weights load_safetensors(const std::filesystem::path& file);
  static Weights load_torch_bin(const std::filesystem::path& file);

  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws naming the tensor and the checkpoint folder when absent.
  const TensorView& get(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::vector<std::filesystem::path>& files() const { return files_paths_; }
  std::string origin() const;                                 // the folder or file, for messages
  const std::string& file_of(const std::string& name) const;  // the file a tensor came from; throws if absent

  // Adds a tensor owned by this store (used when a format needs conversion, e.g. a compressed zip entry).
  void add_owned(const std::string& name, DType dtype, Shape shape, std::vector<unsigned char> bytes,
                 const std::string& file);
  // A view into memory the caller keeps alive (normally a map held by this store). A view whose data is not
  // aligned to its element size (possible in old torch zips) is copied so kernels may read it as T*.
  void add_view(const std::string& name, TensorView view, const std::string& file);
  void merge(Weights&& other);  // for shards; a tensor present in two shards is an error

 private:
  std::vector<std::shared_ptr<MappedFile>> maps_;
  std::vector<std::shared_ptr<std::vector<unsigned char>>> owned_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> tensor_files_;  // name -> file, for "in two shards" messages
  std::vector<std::filesystem::path> files_paths_;
  std::filesystem::path origin_;
  friend class SafetensorsReader;
  friend class TorchBinReader;
};

}  // namespace kestrel
