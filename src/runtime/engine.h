#pragma once
// The entry point generate/ and the front ends use to run a model:
//
//   auto model = kestrel::Model::load(dir);                 // config + weights -> plan -> packed weights
//   auto session = kestrel::open_session(*model, {.threads = 2});
//   auto logits = session->start({{464, 2068}});            // see runtime/session.h
//
// A Model is immutable once loaded and may be shared by any number of sessions (each owns its own KV caches);
// it must outlive every session opened on it.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "io/config.h"
#include "runtime/session.h"

namespace kestrel {

struct Plan;
struct PackedWeights;
class Weights;

struct SessionOptions {
  // Compute threads for OpenMP loops and oneDNN GEMMs; 0 = leave the libraries' defaults (all cores).
  int threads = 0;
  // Largest batch start()/reorder() may create; 0 = no limit. Exceeding it is a kestrel::Error.
  int64_t max_batch = 0;
  // Only "cpu" exists for now; anything else is a clear kestrel::Error.
  std::string device = "cpu";
  // --device cuda only: compute precision ("fp32", "fp16", "bf16") and the tokens per row (decoder sequence;
  // also the T5 encoder input) planned up front; 0 = min(model positions, 1024). See runtime/cuda_session.h.
  std::string precision = "fp16";
  int64_t max_length = 0;
  // --device cuda only: run-to-run identical results. The fused decode kernels that add blocks' partial sums
  // with atomics (in no fixed order) are not used; the unfused kernels they replace run instead, a few
  // percent slower on large models.
  bool deterministic = false;
};

// What an engine file was built for (`kestrel build --device/--precision/--max-batch/--max-length`).
struct EngineTarget {
  std::string device = "cpu";
  std::string precision = "fp32";
  int64_t max_batch = 0, max_length = 0;  // 0: no limit / the model's own
  std::filesystem::path file;             // the engine file, for messages
};

class Model {
 public:
  // Reads dir/config.json (+ generation_config.json) and the weights, checks every tensor against the config,
  // builds the plan and packs the weights into the CPU layout. Throws kestrel::Error naming the tensor/file.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);
  // The same from a config and tensors already in memory (tests, bindings); `dir` only names the model.
  static std::unique_ptr<Model> build(ModelConfig config, const Weights& weights,
                                      std::filesystem::path dir = {});
  // Maps an engine file (`kestrel build`) and uses its plan and packed weights in place: nothing is parsed
  // from a checkpoint or repacked. Every section is checksummed first. Defined in runtime/engine_io.cpp.
  // load(dir) also takes an engine file, or a folder unpacked from one (io/engine_unpack.h).
  static std::unique_ptr<Model> load_engine(const std::filesystem::path& file);
  // A model from parts that are already final (plan folded, weights packed), e.g. views into an engine file.
  static std::unique_ptr<Model> from_parts(ModelConfig config, Plan plan, PackedWeights weights,
                                           std::filesystem::path dir, std::optional<EngineTarget> target);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  const Plan& plan() const { return *plan_; }
  const PackedWeights& weights() const { return *weights_; }
  const std::filesystem::path& dir() const { return dir_; }
  bool is_encoder_decoder() const { return config_.is_t5(); }
  // The token the T5 decoder starts from (generation config's decoder_start_token_id, else pad, else 0).
  int64_t decoder_start_token_id() const;
  // Set when the model came from an engine file; open_session refuses another device.
  const std::optional<EngineTarget>& engine_target() const { return engine_target_; }

 private:
  Model() = default;
  ModelConfig config_;
  std::unique_ptr<Plan> plan_;
  std::unique_ptr<PackedWeights> weights_;
  std::filesystem::path dir_;
  std::optional<EngineTarget> engine_target_;
};

std::unique_ptr<Session> open_session(const Model& model, const SessionOptions& options = {});

}  // namespace kestrel
