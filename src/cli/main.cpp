// `kestrel`: the command-line front end. Exit codes: 0 success, 1 user error, 2 internal error.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Kestrel: fast inference for Hugging Face GPT-2 and T5 models", "kestrel"};
  app.set_version_flag("--version", "kestrel 0.1.0");
  app.require_subcommand(1);
  kestrel::cli::register_inspect(app);
  kestrel::cli::register_tokenize(app);
  kestrel::cli::register_generate(app);
  kestrel::cli::register_score(app);
  kestrel::cli::register_build(app);
  // CLI11 reports an unknown subcommand as "A subcommand is required"; name it instead.
  const auto is_command = [&app](const std::string& name) {
    for (const CLI::App* sub : app.get_subcommands({}))
      if (sub->get_name() == name) return true;
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::cerr << "kestrel: error: unknown command '" << argv[1] << "' (see kestrel --help)\n";
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0 in CLI11; real parse errors map to 1 (user error).
    int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  } catch (const kestrel::Error& e) {
    std::fflush(stdout);
    std::cerr << "kestrel: error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::cerr << "kestrel: error: out of memory\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kestrel: internal error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
