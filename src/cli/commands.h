#pragma once
// Each `kestrel` subcommand lives in its own file and registers itself here.
namespace CLI {
class App;
}

namespace kestrel::cli {

void register_inspect(CLI::App& app);
void register_tokenize(CLI::App& app);   // tokenize + detokenize
void register_generate(CLI::App& app);
void register_score(CLI::App& app);
void register_build(CLI::App& app);     // engine files (runtime/engine_io.h)

}  // namespace kestrel::cli
