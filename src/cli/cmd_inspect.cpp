// `kestrel inspect MODEL`: what a checkpoint holds (architecture, parameters, dtypes, bytes, tensors).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "build/packed_weights.h"
#include "cli/commands.h"
#include "io/config.h"
#include "io/engine_unpack.h"
#include "io/model_source.h"
#include "io/weights.h"
#include "models/plan.h"
#include "runtime/engine.h"

namespace kestrel::cli {

namespace {

struct InspectArgs {
  std::string model;
  std::string revision = "main";
  bool json = false;
  bool tensors = false;
  bool plan = false;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

void run_inspect(const InspectArgs& a) {
  ResolveOptions ro;
  ro.revision = a.revision;
  ro.quiet = a.json;
  const auto dir = resolve_model(a.model, ro);
  const ModelConfig cfg = load_config(dir);
  // A checkpoint shows its stored tensors; an engine file (unpacked to a folder holding a link to it) shows
  // the packed weights its plan runs on.
  const auto engine = unpacked_engine_file(dir);
  std::unique_ptr<Model> model;
  if (engine || a.plan) model = Model::load(dir);

  int64_t params = 0, bytes = 0;
  std::map<std::string, int64_t> by_dtype;                       // dtype -> parameter count
  std::map<std::string, std::pair<std::string, Shape>> listing;  // tensor -> dtype, shape
  std::vector<std::string> files;
  if (engine) {
    for (const auto& [name, t] : model->weights().tensors) {
      params += shape_numel(t.shape);
      listing[name] = {"F32", t.shape};
    }
    bytes = int64_t(model->weights().bytes());
    by_dtype["F32"] = params;
    files.push_back(engine->filename().string());
  } else {
    const Weights w = Weights::load(dir);
    for (const auto& [name, t] : w.tensors()) {
      params += t.numel();
      bytes += int64_t(t.nbytes());
      by_dtype[std::string(dtype_name(t.dtype))] += t.numel();
      listing[name] = {std::string(dtype_name(t.dtype)), t.shape};
    }
    for (const auto& f : w.files()) files.push_back(f.filename().string());
  }
  nlohmann::json j;
  j["path"] = engine ? engine->string() : dir.string();
  j["format"] = engine ? "kestrel-engine" : "huggingface";
  if (engine && model->engine_target()) {
    const auto& t = *model->engine_target();
    j["engine_target"] = {{"device", t.device},
                          {"precision", t.precision},
                          {"max_batch", t.max_batch},
                          {"max_length", t.max_length}};
  }
  j["config"] = config_to_json(cfg);
  j["architecture"] = cfg.model_type;
  j["parameters"] = params;
  j["bytes"] = bytes;
  j["tensor_count"] = listing.size();
  j["dtypes"] = by_dtype;
  j["weight_files"] = files;
  if (a.tensors) {
    for (const auto& [name, t] : listing) j["tensors"][name] = {{"dtype", t.first}, {"shape", t.second}};
  }
  if (a.plan) j["plan"] = model->plan().to_string();
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << "model:        " << j["path"].get<std::string>() << (engine ? " (Kestrel engine)" : "")
            << "\n";
  if (j.contains("engine_target")) std::cout << "built for:    " << j["engine_target"].dump() << "\n";
  std::cout << "architecture: " << cfg.model_type << "\n";
  if (cfg.is_gpt2()) {
    const auto& g = cfg.gpt2();
    std::cout << "  layers " << g.n_layer << ", hidden " << g.n_embd << ", heads " << g.n_head << ", ffn "
              << g.ffn_dim() << ", positions " << g.n_positions << ", vocab " << g.vocab_size
              << ", activation " << g.activation_function
              << (g.tie_word_embeddings ? ", tied head" : ", untied head") << "\n";
  } else {
    const auto& t = cfg.t5();
    std::cout << "  encoder layers " << t.num_layers << ", decoder layers " << t.num_decoder_layers
              << ", d_model " << t.d_model << ", d_kv " << t.d_kv << ", d_ff " << t.d_ff << ", heads "
              << t.num_heads << ", vocab " << t.vocab_size << ", ffn " << (t.gated_ffn ? "gated-" : "")
              << activation_name(t.activation) << (t.tie_word_embeddings ? ", tied head" : ", untied head")
              << "\n";
  }
  std::cout << "parameters:   " << params << "\n";
  std::cout << "bytes:        " << bytes << " (" << human_bytes(double(bytes)) << ")\n";
  std::cout << "tensors:      " << listing.size() << "\n";
  std::cout << "dtypes:      ";
  for (const auto& [d, n] : by_dtype) std::cout << " " << d << " (" << n << " params)";
  std::cout << "\n";
  if (a.tensors)
    for (const auto& [name, t] : listing)
      std::cout << "  " << name << "  " << t.first << " " << shape_str(t.second) << "\n";
  if (a.plan) std::cout << "\nplan:\n" << model->plan().to_string();
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  auto* cmd = app.add_subcommand("inspect", "Show a model's architecture, parameter count, dtypes and size");
  cmd->add_option("model", args->model, "Model folder, engine file, HF cache entry, built-in name or Hub id")
      ->required();
  cmd->add_option("--revision", args->revision, "Hub revision (branch, tag or commit)");
  cmd->add_flag("--json", args->json, "Print JSON");
  cmd->add_flag("--tensors", args->tensors, "List every tensor");
  cmd->add_flag("--plan", args->plan, "Print the plan of fused ops the engine runs");
  cmd->callback([args] { run_inspect(*args); });
}

}  // namespace kestrel::cli
