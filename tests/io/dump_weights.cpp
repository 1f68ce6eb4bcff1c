// kestrel_dump_weights PATH: loads a checkpoint folder (or one .safetensors / .bin file) with io/weights and
// prints {"files": [...], "tensors": {name: {"dtype", "shape", "crc32"}}}, where crc32 is zlib's CRC-32 of
// the tensor's row-major little-endian bytes. Tests compare it with torch to check every value was read
// exactly. Errors print "error: ..." on stderr and exit with the error's code (1 for a bad file).
#include <zlib.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/weights.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: kestrel_dump_weights CHECKPOINT_DIR|FILE.safetensors|FILE.bin\n";
    return 2;
  }
  const std::filesystem::path path = argv[1];
  try {
    kestrel::Weights w = std::filesystem::is_directory(path)  ? kestrel::Weights::load(path)
                         : path.extension() == ".safetensors" ? kestrel::Weights::load_safetensors(path)
                                                              : kestrel::Weights::load_torch_bin(path);
    nlohmann::json out, tensors = nlohmann::json::object();
    out["files"] = nlohmann::json::array();
    for (const auto& f : w.files()) out["files"].push_back(f.filename().string());
    for (const auto& [name, t] : w.tensors()) {
      // crc32_z takes a size_t length, so tensors past 4 GiB need no chunking.
      const uLong crc = crc32_z(crc32_z(0L, Z_NULL, 0), static_cast<const Bytef*>(t.data), t.nbytes());
      tensors[name] = {{"dtype", kestrel::dtype_name(t.dtype)}, {"shape", t.shape}, {"crc32", crc}};
    }
    out["tensors"] = std::move(tensors);
    std::cout << out.dump() << "\n";
  } catch (const kestrel::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return e.exit_code();
  }
  return 0;
}
