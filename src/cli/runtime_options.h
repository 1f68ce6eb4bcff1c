#pragma once
// The options every command that runs a model shares: where it runs, in what precision, with how many
// threads, and the limits memory is planned for. One definition, so generate, score and build agree on names,
// defaults and errors.
#include <cstdint>
#include <string>

#include "runtime/engine.h"
#include "runtime/engine_io.h"

namespace CLI {
class App;
}

namespace kestrel::cli {

struct RuntimeArgs {
  std::string device = "auto";  // auto: cuda when this build has it and a GPU is present, else cpu
  std::string precision;        // empty: the device's default (cpu fp32, cuda fp16)
  int threads = 0;
  int64_t max_batch = 0, max_length = 0;
  bool cache = true;
  bool deterministic = false;
};

struct RuntimeChoice {
  SessionOptions session;
  ModelLoadOptions load;
};

// Adds --device, --precision, --threads, --max-batch, --max-length and --cache/--no-cache to `cmd`.
void add_runtime_options(CLI::App* cmd, RuntimeArgs& args);
// Resolves --device auto and validates every option, naming the bad one.
RuntimeChoice resolve_runtime(const RuntimeArgs& args);

}  // namespace kestrel::cli
