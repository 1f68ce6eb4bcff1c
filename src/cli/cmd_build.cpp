// `kestrel build MODEL -o FILE.kestrel`: one engine file holding everything needed to run MODEL (see
// runtime/engine_io.h). Every command that takes MODEL also takes the file it writes.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.h"
#include "core/progress.h"
#include "io/model_source.h"
#include "runtime/engine_io.h"

namespace kestrel::cli {

namespace {

struct BuildArgs {
  std::string model, output, revision = "main";
  EngineBuildOptions options;
};

void run_build(const BuildArgs& a) {
  ResolveOptions ro;
  ro.revision = a.revision;
  ro.quiet = a.options.quiet;
  const auto dir = resolve_model(a.model, ro);
  const uint64_t bytes = build_engine(dir, a.output, a.options);
  if (!a.options.quiet)
    std::cerr << "wrote " << a.output << " (" << Progress::format_amount(bytes, Progress::Unit::Bytes) << ", "
              << engine_target(a.options).device << ", " << engine_target(a.options).precision << ")\n";
}

}  // namespace

void register_build(CLI::App& app) {
  auto a = std::make_shared<BuildArgs>();
  auto* cmd =
      app.add_subcommand("build",
                         "Build an engine file: config, generation defaults, tokenizer files, the fused plan "
                         "and weights packed for "
                         "the target, in one checksummed file that loads by memory-mapping it. Give the file "
                         "wherever a MODEL is "
                         "asked for. The write is atomic: on any failure the destination is left as it was.");
  cmd->add_option("model", a->model, "Model folder, HF cache entry, built-in name or Hub id")->required();
  cmd->add_option("-o,--output", a->output, "The engine file to write (e.g. gpt2.kestrel)")->required();
  cmd->add_option("--device", a->options.device, "Target device: cpu or cuda");
  cmd->add_option("--precision", a->options.precision,
                  "Compute precision: cpu fp32; cuda fp16 (default), bf16, fp32");
  cmd->add_option("--max-batch", a->options.max_batch, "Largest batch sessions plan for (0: no limit)");
  cmd->add_option("--max-length", a->options.max_length,
                  "Tokens per row sessions plan for (0: the model's own)");
  cmd->add_option("--revision", a->revision, "Hub revision");
  cmd->add_flag("-q,--quiet", a->options.quiet, "No progress or summary");
  cmd->callback([a] { run_build(*a); });
}

}  // namespace kestrel::cli
