// `kestrel inspect MODEL`: what a checkpoint holds (architecture, parameters, dtypes, bytes, tensors).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "io/config.h"
#include "io/model_source.h"
#include "io/weights.h"

namespace kestrel::cli {

namespace {

struct InspectArgs {
  std::string model;
  std::string revision = "main";
  bool json = false;
  bool tensors = false;
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
  const Weights w = Weights::load(dir);

  int64_t params = 0, bytes = 0;
  std::map<std::string, int64_t> by_dtype;  // dtype -> parameter count
  for (const auto& [name, t] : w.tensors()) {
    params += t.numel();
    bytes += int64_t(t.nbytes());
    by_dtype[std::string(dtype_name(t.dtype))] += t.numel();
  }
  nlohmann::json j;
  j["path"] = dir.string();
  j["config"] = config_to_json(cfg);
  j["architecture"] = cfg.model_type;
  j["parameters"] = params;
  j["bytes"] = bytes;
  j["tensor_count"] = w.tensors().size();
  j["dtypes"] = by_dtype;
  std::vector<std::string> files;
  for (const auto& f : w.files()) files.push_back(f.filename().string());
  j["weight_files"] = files;
  if (a.tensors) {
    for (const auto& [name, t] : w.tensors())
      j["tensors"][name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}};
  }
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << "model:        " << dir.string() << "\n";
  std::cout << "architecture: " << cfg.model_type << "\n";
  if (cfg.is_gpt2()) {
    const auto& g = cfg.gpt2();
    std::cout << "  layers " << g.n_layer << ", hidden " << g.n_embd << ", heads " << g.n_head << ", ffn "
              << g.ffn_dim() << ", positions " << g.n_positions << ", vocab " << g.vocab_size << ", activation "
              << g.activation_function << (g.tie_word_embeddings ? ", tied head" : ", untied head") << "\n";
  } else {
    const auto& t = cfg.t5();
    std::cout << "  encoder layers " << t.num_layers << ", decoder layers " << t.num_decoder_layers << ", d_model "
              << t.d_model << ", d_kv " << t.d_kv << ", d_ff " << t.d_ff << ", heads " << t.num_heads << ", vocab "
              << t.vocab_size << ", ffn " << (t.gated_ffn ? "gated-" : "") << activation_name(t.activation)
              << (t.tie_word_embeddings ? ", tied head" : ", untied head") << "\n";
  }
  std::cout << "parameters:   " << params << "\n";
  std::cout << "bytes:        " << bytes << " (" << human_bytes(double(bytes)) << ")\n";
  std::cout << "tensors:      " << w.tensors().size() << "\n";
  std::cout << "dtypes:      ";
  for (const auto& [d, n] : by_dtype) std::cout << " " << d << " (" << n << " params)";
  std::cout << "\n";
  if (a.tensors)
    for (const auto& [name, t] : w.tensors())
      std::cout << "  " << name << "  " << dtype_name(t.dtype) << " " << shape_str(t.shape) << "\n";
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  auto* cmd = app.add_subcommand("inspect", "Show a model's architecture, parameter count, dtypes and size");
  cmd->add_option("model", args->model, "Model folder, HF cache entry, built-in name or Hub id")->required();
  cmd->add_option("--revision", args->revision, "Hub revision (branch, tag or commit)");
  cmd->add_flag("--json", args->json, "Print JSON");
  cmd->add_flag("--tensors", args->tensors, "List every tensor");
  cmd->callback([args] { run_inspect(*args); });
}

}  // namespace kestrel::cli
