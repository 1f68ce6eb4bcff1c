// Model loading: config -> checkpoint tensors -> plan (models/) -> packed weights and exact folds (build/).
#include "runtime/engine.h"

#include "build/packed_weights.h"
#include "core/error.h"
#include "io/engine_file.h"
#include "io/engine_unpack.h"
#include "io/weights.h"
#include "models/model_plan.h"
#include "runtime/cpu_session.h"
#include "runtime/cuda_session.h"

namespace kestrel {

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir) {
  // Engine files, and folders unpacked from one for the tokenizer and config readers, load in place.
  if (looks_like_engine_file(dir)) return load_engine(dir);
  if (auto engine = unpacked_engine_file(dir)) return load_engine(*engine);
  ModelConfig config = load_config(dir);
  // The checkpoint stays mapped only while packing: afterwards the model owns fp32 copies in the CPU layout.
  const Weights weights = Weights::load(dir);
  return build(std::move(config), weights, dir);
}

std::unique_ptr<Model> Model::build(ModelConfig config, const Weights& weights, std::filesystem::path dir) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = std::move(dir);
  m->config_ = std::move(config);
  m->plan_ = std::make_unique<Plan>(make_plan(m->config_, weights));
  m->weights_ = std::make_unique<PackedWeights>(pack_weights_cpu(*m->plan_, weights));
  fold_exact_scales(*m->plan_, *m->weights_);
  return m;
}

std::unique_ptr<Model> Model::from_parts(ModelConfig config, Plan plan, PackedWeights weights,
                                         std::filesystem::path dir, std::optional<EngineTarget> target) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = std::move(dir);
  m->config_ = std::move(config);
  m->plan_ = std::make_unique<Plan>(std::move(plan));
  m->weights_ = std::make_unique<PackedWeights>(std::move(weights));
  m->engine_target_ = std::move(target);
  return m;
}

Model::~Model() = default;

int64_t Model::decoder_start_token_id() const {
  const auto& g = config_.generation;
  if (g.decoder_start_token_id) return *g.decoder_start_token_id;
  if (g.pad_token_id) return *g.pad_token_id;
  return 0;
}

std::unique_ptr<Session> open_session(const Model& model, const SessionOptions& options) {
  if (const auto& t = model.engine_target(); t && t->device != options.device)
    fail(t->file.string() + ": engine built for --device " + t->device + ", not " + options.device +
         "; rebuild it with `kestrel build MODEL --device " + options.device + "`");
  if (options.device == "cuda") {
    CudaSessionOptions cuda;
    cuda.precision = options.precision;
    cuda.max_length = options.max_length;
    cuda.deterministic = options.deterministic;
    if (options.max_batch > 0) cuda.max_batch = options.max_batch;
    return open_cuda_session(model, options, cuda);
  }
  return std::make_unique<CpuSession>(model, options);
}

}  // namespace kestrel
