// `kestrel tokenize MODEL TEXT` and `kestrel detokenize MODEL IDS`.
#include <CLI/CLI.hpp>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/parse_ids.h"
#include "core/error.h"
#include "io/config.h"
#include "io/model_source.h"
#include "tokenizers/tokenizer.h"

namespace kestrel::cli {

namespace {

struct TokArgs {
  std::string model, text, ids, revision = "main";
  bool json = false, no_special = false, skip_special = false, read_stdin = false;
};

std::unique_ptr<Tokenizer> open_tokenizer(const TokArgs& a) {
  ResolveOptions ro;
  ro.revision = a.revision;
  ro.quiet = true;
  const auto dir = resolve_model(a.model, ro);
  return load_tokenizer(dir, load_config(dir).model_type);
}

void run_tokenize(const TokArgs& a) {
  std::string text = a.text;
  if (a.read_stdin || text == "-") text.assign(std::istreambuf_iterator<char>(std::cin), {});
  const auto tok = open_tokenizer(a);
  const auto ids = tok->encode(text, !a.no_special);
  if (a.json) {
    std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
    return;
  }
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
}

void run_detokenize(const TokArgs& a) {
  const auto tok = open_tokenizer(a);
  const auto ids = parse_ids(a.ids, "IDS", tok->vocab_size());
  const auto text = tok->decode(ids, a.skip_special);
  if (a.json) {
    std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
    return;
  }
  std::cout << text << "\n";
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokArgs>();
  auto* tok = app.add_subcommand("tokenize", "Turn text into token ids");
  tok->add_option("model", args->model, "Model folder, HF cache entry, built-in name or Hub id")->required();
  tok->add_option("text", args->text, "Text to tokenize ('-' or omitted with --stdin: read standard input)");
  tok->add_flag("--stdin", args->read_stdin, "Read the text from standard input");
  tok->add_flag("--no-special", args->no_special, "Do not add special tokens (T5's </s>)");
  tok->add_option("--revision", args->revision, "Hub revision");
  tok->add_flag("--json", args->json, "Print {\"ids\": [...]}");
  tok->callback([args] {
    if (args->text.empty() && !args->read_stdin) fail("tokenize: give TEXT, or --stdin");
    run_tokenize(*args);
  });

  auto dargs = std::make_shared<TokArgs>();
  auto* det = app.add_subcommand("detokenize", "Turn token ids into text");
  det->add_option("model", dargs->model, "Model folder, HF cache entry, built-in name or Hub id")->required();
  det->add_option("ids", dargs->ids, "Token ids, comma or space separated (e.g. 464,2068,7586)")->required();
  det->add_flag("--skip-special", dargs->skip_special, "Drop special tokens (eos, pad) from the text");
  det->add_option("--revision", dargs->revision, "Hub revision");
  det->add_flag("--json", dargs->json, "Print {\"text\": \"...\"}");
  det->callback([dargs] { run_detokenize(*dargs); });
}

}  // namespace kestrel::cli
