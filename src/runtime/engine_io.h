#pragma once
// Turning a model into an engine file and back (the container itself is io/engine_file.h).
//
//   build_engine("gpt2-folder", "gpt2.kestrel", {.device = "cpu"});  // streams tensors, one at a time
//   auto model = Model::load_engine("gpt2.kestrel");                   // maps it; weights used in place
//   auto model = load_model("gpt2-folder", {});                        // through the engine cache
//
// An engine holds: config.json (+ generation_config.json), the tokenizer files, the plan with exact scale
// folds applied, and every plan weight packed for the CPU kernels (fp32, [out, in], fused), each in its own
// checksummed, 64-byte aligned section. The CUDA backend converts those fp32 weights to its precision as it
// uploads them; the engine records the target device, precision and limits, and a session on another device
// is refused with a message to rebuild.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "runtime/engine.h"

namespace kestrel {

struct EngineBuildOptions {
  std::string device = "cpu";
  std::string precision;  // empty: the device's default (cpu: fp32, cuda: fp16)
  int64_t max_batch = 0, max_length = 0;
  bool quiet = false;  // no progress line
};

// Validates the options (naming the bad one) and fills in defaults.
EngineTarget engine_target(const EngineBuildOptions& options);

// Builds an engine from a checkpoint folder; the write is atomic (io/engine_file.h). Returns the bytes
// written.
uint64_t build_engine(const std::filesystem::path& model_dir, const std::filesystem::path& output,
                      const EngineBuildOptions& options);

// The engine cache: kestrel_cache_dir()/engines/<key>.kestrel, keyed by the checkpoint and the options.
// The key hashes the content of config.json and generation_config.json, and the name, size and modification
// time of every other file in the folder (hashing gigabytes of weights on every run would cost more than the
// build it saves): editing or replacing any file of the checkpoint makes a new key.
std::string engine_cache_key(const std::filesystem::path& model_dir, const EngineBuildOptions& options);
std::filesystem::path engine_cache_path(const std::filesystem::path& model_dir,
                                        const EngineBuildOptions& options);

struct ModelLoadOptions {
  EngineBuildOptions build;
  bool cache = true;  // keep a built engine in the cache and reuse it; false: build in memory every time
};

// MODEL as a checkpoint folder, an engine file or an unpacked engine folder. A checkpoint goes through the
// engine cache (built on a miss, a corrupt entry is rebuilt) unless options.cache is false.
std::unique_ptr<Model> load_model(const std::filesystem::path& model, const ModelLoadOptions& options = {});

}  // namespace kestrel
