#include "cli/runtime_options.h"

#include <CLI/CLI.hpp>

#include "core/error.h"
#include "runtime/cuda_session.h"

namespace kestrel::cli {

void add_runtime_options(CLI::App* cmd, RuntimeArgs& a) {
  cmd->add_option("--device", a.device, "Where to run: auto (cuda if a GPU is present, else cpu), cpu, cuda");
  cmd->add_option("--precision", a.precision,
                  "Compute precision: fp32 (cpu; default there), fp16 (cuda default), bf16");
  cmd->add_option("--threads", a.threads, "CPU compute threads (OpenMP loops and oneDNN GEMMs); 0 = all cores");
  cmd->add_option("--max-batch", a.max_batch,
                  "Most rows (prompts x beams) memory is planned for; 0 = default");
  cmd->add_option("--max-length", a.max_length,
                  "Most tokens per row memory is planned for (cuda); 0 = default");
  cmd->add_flag("--deterministic", a.deterministic,
                "cuda: identical results run to run (no kernels that add partial sums in arbitrary order; a few "
                "percent slower on large models)");
  cmd->add_flag("--cache,!--no-cache", a.cache,
                "Keep the engine built from a checkpoint under the Kestrel cache and reuse it (default on)");
}

RuntimeChoice resolve_runtime(const RuntimeArgs& a) {
  if (a.threads < 0) fail("--threads must be >= 0, got " + std::to_string(a.threads));
  if (a.max_batch < 0) fail("--max-batch must be >= 0, got " + std::to_string(a.max_batch));
  if (a.max_length < 0) fail("--max-length must be >= 0, got " + std::to_string(a.max_length));
  std::string device = a.device;
  if (device == "auto") device = cuda_device_available() ? "cuda" : "cpu";
  if (device != "cpu" && device != "cuda") fail("--device " + a.device + ": choose auto, cpu or cuda");

  RuntimeChoice c;
  c.load.cache = a.cache;
  c.load.build.device = device;
  c.load.build.precision = a.precision;
  c.load.build.max_batch = a.max_batch;
  c.load.build.max_length = a.max_length;
  c.load.build.quiet = true;
  const EngineTarget target = engine_target(c.load.build);  // validates precision for the device
  c.session.device = device;
  c.session.precision = target.precision;
  c.session.threads = a.threads;
  c.session.max_batch = a.max_batch;
  c.session.max_length = a.max_length;
  c.session.deterministic = a.deterministic;
  return c;
}

}  // namespace kestrel::cli
