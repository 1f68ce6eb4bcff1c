#include "io/weights.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/torch_bin.h"

namespace kestrel {
namespace {

namespace fs = std::filesystem;
using Loader = Weights (*)(const fs::path&);

// std::filesystem's throwing overloads raise filesystem_error (e.g. on a permission problem); Kestrel's
// callers expect kestrel::Error, so probe with error codes: anything unreadable counts as absent and the
// loader says so.
bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string() + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    fail(file.string() + ": not valid JSON: " + e.what());
  }
}

// A shard named by an index must be a plain file name next to the index, never a path out of the folder.
void check_shard_name(const std::string& shard, const std::string& label) {
  if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
      shard.find('\\') != std::string::npos)
    fail(label + ": shard '" + shard + "' must be a file name in the checkpoint folder");
}

// model.safetensors.index.json / pytorch_model.bin.index.json: {"weight_map": {tensor: shard file}}.
// Each shard is loaded once; every indexed tensor must be in its shard and no tensor may be in two shards.
Weights load_sharded(const fs::path& index_file, Loader load_shard) {
  const std::string label = index_file.string();
  const nlohmann::json index = read_json(index_file);
  if (!index.is_object()) fail(label + ": must be a JSON object");
  auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) fail(label + ": missing object 'weight_map'");
  if (map_it->empty()) fail(label + ": 'weight_map' is empty");

  std::map<std::string, std::vector<std::string>> by_shard;  // sorted: shards load in a stable order
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) fail(label + ": weight_map entry '" + tensor + "' must name a shard file");
    const std::string name = shard.get<std::string>();
    check_shard_name(name, label);
    by_shard[name].push_back(tensor);
  }

  Weights all;
  for (const auto& [shard, names] : by_shard) {
    const fs::path path = index_file.parent_path() / shard;
    if (!path_exists(path)) fail(label + ": shard '" + shard + "' does not exist");
    Weights part = load_shard(path);
    for (const auto& name : names)
      if (!part.has(name)) fail(label + ": tensor '" + name + "' is not in its shard " + path.string());
    all.merge(std::move(part));
  }
  return all;
}

}  // namespace

Weights Weights::load_safetensors(const fs::path& file) {
  return SafetensorsReader::load(file);
}
Weights Weights::load_torch_bin(const fs::path& file) {
  return TorchBinReader::load(file);
}

Weights Weights::load(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(dir.string() + ": not a checkpoint folder");
  // transformers' order of preference.
  const struct {
    const char* file;
    bool sharded;
    Loader loader;
  } formats[] = {
      {"model.safetensors", false, &Weights::load_safetensors},
      {"model.safetensors.index.json", true, &Weights::load_safetensors},
      {"pytorch_model.bin", false, &Weights::load_torch_bin},
      {"pytorch_model.bin.index.json", true, &Weights::load_torch_bin},
  };
  std::string looked_for;
  for (const auto& f : formats) {
    const fs::path path = dir / f.file;
    if (path_exists(path)) {
      Weights w = f.sharded ? load_sharded(path, f.loader) : f.loader(path);
      w.origin_ = dir;
      return w;
    }
    looked_for += std::string(looked_for.empty() ? "" : ", ") + f.file;
  }
  fail(dir.string() + ": no weights found (looked for " + looked_for + ")");
}

const TensorView& Weights::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(origin() + ": tensor '" + name + "' not found");
  return it->second;
}

const std::string& Weights::file_of(const std::string& name) const {
  auto it = tensor_files_.find(name);
  if (it == tensor_files_.end()) fail(origin() + ": tensor '" + name + "' not found");
  return it->second;
}

std::string Weights::origin() const {
  return origin_.string();
}

void Weights::add_owned(const std::string& name, DType dtype, Shape shape, std::vector<unsigned char> bytes,
                        const std::string& file) {
  if (tensors_.count(name)) fail(file + ": tensor '" + name + "' appears twice");
  auto owned = std::make_shared<std::vector<unsigned char>>(std::move(bytes));
  TensorView v{dtype, std::move(shape), owned->data()};
  if (owned->size() != v.nbytes())
    internal_error(file + ": tensor '" + name + "': owned buffer size does not match its shape");
  owned_.push_back(std::move(owned));
  tensors_.emplace(name, std::move(v));
  tensor_files_.emplace(name, file);
}

void Weights::add_view(const std::string& name, TensorView view, const std::string& file) {
  if (tensors_.count(name)) fail(file + ": tensor '" + name + "' appears twice");
  // std::vector's allocation is aligned for any scalar, so copying fixes a misaligned view.
  if (reinterpret_cast<uintptr_t>(view.data) % dtype_size(view.dtype) != 0) {
    const auto* p = static_cast<const unsigned char*>(view.data);
    add_owned(name, view.dtype, std::move(view.shape), std::vector<unsigned char>(p, p + view.nbytes()),
              file);
    return;
  }
  tensors_.emplace(name, std::move(view));
  tensor_files_.emplace(name, file);
}

void Weights::merge(Weights&& other) {
  for (const auto& [name, view] : other.tensors_) {
    auto it = tensor_files_.find(name);
    if (it != tensor_files_.end())
      fail("tensor '" + name + "' is in two shards: " + it->second + " and " + other.tensor_files_.at(name));
  }
  for (auto& [name, view] : other.tensors_) {
    tensor_files_.emplace(name, other.tensor_files_.at(name));
    tensors_.emplace(name, std::move(view));
  }
  for (auto& m : other.maps_) maps_.push_back(std::move(m));
  for (auto& o : other.owned_) owned_.push_back(std::move(o));
  for (auto& f : other.files_paths_) files_paths_.push_back(std::move(f));
  if (origin_.empty()) origin_ = other.origin_;
  other = Weights();
}

}  // namespace kestrel
