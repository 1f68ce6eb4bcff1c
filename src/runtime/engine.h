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
#include <string>

#include "io/config.h"
#include "runtime/session.h"

namespace kestrel {

struct Plan;
struct PackedWeights;

struct SessionOptions {
  // Compute threads for both OpenMP loops and OpenBLAS GEMMs; 0 = leave the libraries' defaults (all cores).
  int threads = 0;
  // Largest batch start()/reorder() may create; 0 = no limit. Exceeding it is a kestrel::Error.
  int64_t max_batch = 0;
  // Only "cpu" exists for now; anything else is a clear kestrel::Error.
  std::string device = "cpu";
};

class Model {
 public:
  // Reads dir/config.json (+ generation_config.json) and the weights, checks every tensor against the config,
  // builds the plan and packs the weights into the CPU layout. Throws kestrel::Error naming the tensor/file.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);
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

 private:
  Model() = default;
  ModelConfig config_;
  std::unique_ptr<Plan> plan_;
  std::unique_ptr<PackedWeights> weights_;
  std::filesystem::path dir_;
};

std::unique_ptr<Session> open_session(const Model& model, const SessionOptions& options = {});

}  // namespace kestrel
