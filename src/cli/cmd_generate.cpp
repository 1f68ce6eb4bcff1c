// Placeholder registration until the engine lands (replaced by the CPU engine work).
#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace kestrel::cli {
void register_generate(CLI::App& app) { (void)app; }
}  // namespace kestrel::cli
