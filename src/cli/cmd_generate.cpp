// `kestrel generate MODEL`: continue prompts with greedy decoding, sampling or beam search.
//   GPT-2: the prompt starts the text; T5: the prompt is the encoder input and the decoder starts fresh.
//   Text streams to stdout as tokens come; --json prints the result once at the end.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/parse_ids.h"
#include "cli/runtime_options.h"
#include "core/error.h"
#include "generate/generator.h"
#include "generate/text_stream.h"
#include "io/model_source.h"
#include "runtime/engine.h"
#include "runtime/engine_io.h"
#include "tokenizers/tokenizer.h"

namespace kestrel::cli {

namespace {

struct GenerateArgs {
  std::string model, revision = "main", early_stopping;
  std::vector<std::string> prompts, prompt_ids;
  RuntimeArgs runtime;
  bool json = false;
  bool stats = false;  // timing line on stderr
  // Generation options; only those given on the command line override the model's generation_config.json.
  int64_t max_new_tokens = 0, min_new_tokens = 0, num_beams = 1, num_return_sequences = 1, top_k = 0,
          no_repeat_ngram_size = 0;
  double temperature = 1, top_p = 1, repetition_penalty = 1, length_penalty = 1;
  uint64_t seed = 0;
  bool do_sample = false;
};

// The options the user actually typed, keyed by their long name.
struct GivenOptions {
  const CLI::App* cmd;
  bool has(const char* name) const { return cmd->get_option(name)->count() > 0; }
};

GenerationOptions generation_options(const GenerateArgs& a, const GivenOptions& given) {
  GenerationOptions o;
  if (given.has("--max-new-tokens")) o.max_new_tokens = a.max_new_tokens;
  if (given.has("--min-new-tokens")) o.min_new_tokens = a.min_new_tokens;
  if (given.has("--num-beams")) o.num_beams = a.num_beams;
  if (given.has("--num-return-sequences")) o.num_return_sequences = a.num_return_sequences;
  if (given.has("--top-k")) o.top_k = a.top_k;
  if (given.has("--no-repeat-ngram-size")) o.no_repeat_ngram_size = a.no_repeat_ngram_size;
  if (given.has("--temperature")) o.temperature = a.temperature;
  if (given.has("--top-p")) o.top_p = a.top_p;
  if (given.has("--repetition-penalty")) o.repetition_penalty = a.repetition_penalty;
  if (given.has("--length-penalty")) o.length_penalty = a.length_penalty;
  if (given.has("--seed")) o.seed = a.seed;
  if (given.has("--do-sample")) o.do_sample = a.do_sample;
  if (given.has("--early-stopping"))
    o.early_stopping = parse_early_stopping(a.early_stopping, "--early-stopping");
  return o;
}

bool has_tokenizer_files(const std::filesystem::path& dir) {
  for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt", "spiece.model"})
    if (std::filesystem::exists(dir / f)) return true;
  return false;
}

std::string read_stdin_prompt() {
  std::string text(std::istreambuf_iterator<char>(std::cin), {});
  // `echo TEXT | kestrel generate` should not feed the shell's newline to the model.
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  return text;
}

TokenRows collect_prompts(const GenerateArgs& a, const Tokenizer* tok, int64_t vocab) {
  if (!a.prompts.empty() && !a.prompt_ids.empty()) fail("give --prompt or --prompt-ids, not both");
  TokenRows rows;
  for (size_t i = 0; i < a.prompt_ids.size(); ++i)
    rows.push_back(parse_ids(a.prompt_ids[i], "--prompt-ids #" + std::to_string(i + 1), vocab));
  if (!a.prompt_ids.empty()) return rows;
  std::vector<std::string> texts = a.prompts;
  if (texts.empty()) texts.push_back(read_stdin_prompt());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = tok->encode(texts[i], /*add_special_tokens=*/true);
    for (int64_t id : ids)
      if (id < 0 || id >= vocab)
        fail("--prompt #" + std::to_string(i + 1) + ": the tokenizer produced id " + std::to_string(id) +
             ", outside the model's vocabulary of " + std::to_string(vocab));
    rows.push_back(std::move(ids));
  }
  return rows;
}

// Prints text (or, with no tokenizer, ids) of one sequence as its tokens arrive.
class StdoutStream {
 public:
  explicit StdoutStream(const Tokenizer* tok)
      : tok_(tok), text_([tok](const std::vector<int64_t>& ids) { return tok->decode(ids, true); }) {}
  void push(std::span<const int64_t> tokens) {
    if (tok_) {
      std::cout << text_.push({tokens.begin(), tokens.end()});
    } else {
      for (int64_t t : tokens) std::cout << (first_ ? "" : " ") << t, first_ = false;
    }
    std::cout.flush();
  }
  void finish() {
    if (tok_) std::cout << text_.finish();
    std::cout << "\n";
    std::cout.flush();
  }

 private:
  const Tokenizer* tok_;
  TextStream text_;
  bool first_ = true;
};

nlohmann::json sequence_json(const GeneratedSequence& s, const Tokenizer* tok) {
  nlohmann::json j;
  j["ids"] = s.tokens;
  if (tok) j["text"] = tok->decode(s.tokens, true);
  if (s.score) j["score"] = *s.score;
  return j;
}

// One line on stderr: how many tokens came out and how fast (prompt processing included).
void print_stats(const GenerationResult& r, std::chrono::steady_clock::duration elapsed,
                 const std::string& device) {
  int64_t tokens = 0;
  for (const auto& s : r.sequences) tokens += int64_t(s.tokens.size());
  const double seconds = std::chrono::duration<double>(elapsed).count();
  std::fflush(stdout);
  std::fprintf(stderr, "\n[%lld tokens in %.3f s: %.1f tokens/s on %s]\n", static_cast<long long>(tokens),
               seconds, seconds > 0 ? double(tokens) / seconds : 0.0, device.c_str());
}

void run_generate(const GenerateArgs& a, const GivenOptions& given) {
  const RuntimeChoice runtime = resolve_runtime(a.runtime);
  ResolveOptions ro;
  ro.revision = a.revision;
  ro.quiet = true;
  const auto dir = resolve_model(a.model, ro);
  const auto model = load_model(dir, runtime.load);
  const GenerationConfig config =
      make_generation_config(model->config().generation, generation_options(a, given));

  // Text needs the tokenizer; --prompt-ids does not, and then text is printed only if the folder has one.
  std::unique_ptr<Tokenizer> tok;
  if (a.prompt_ids.empty() || has_tokenizer_files(dir)) tok = load_tokenizer(dir, model->config().model_type);
  // Unless --max-batch says otherwise, a GPU session plans the rows this call needs (prompts × beams, or ×
  // sequences sampled) rather than the default 8: less memory, and a decode step a few percent faster
  // (gpt2-small 0.299 against 0.308 ms on an H100, src/kernels/cuda/NOTES.md).
  SessionOptions session_options = runtime.session;
  if (session_options.device == "cuda" && session_options.max_batch == 0) {
    const size_t given = std::max(a.prompts.size(), a.prompt_ids.size());  // none: one, from stdin
    session_options.max_batch = session_rows(config, int64_t(std::max<size_t>(1, given)));
  }
  const auto session = open_session(*model, session_options);
  const TokenRows prompts = collect_prompts(a, tok.get(), session->vocab_size());

  const bool single = prompts.size() == 1 && config.num_return_sequences == 1;
  StdoutStream out(tok.get());
  TokenStream stream;
  if (single && !a.json) stream = [&out](int64_t, std::span<const int64_t> t) { out.push(t); };
  const auto t0 = std::chrono::steady_clock::now();
  const GenerationResult result = generate(*session, prompts, config, stream);
  if (a.stats) print_stats(result, std::chrono::steady_clock::now() - t0, runtime.session.device);

  if (a.json) {
    if (single) {
      std::cout << sequence_json(result.sequences[0], tok.get()).dump() << "\n";
      return;
    }
    nlohmann::json list = nlohmann::json::array();
    for (size_t i = 0; i < result.sequences.size(); ++i) {
      auto j = sequence_json(result.sequences[i], tok.get());
      j["prompt"] = result.sequences[i].prompt_index;
      j["sequence"] = int64_t(i) % config.num_return_sequences;
      list.push_back(std::move(j));
    }
    std::cout << list.dump() << "\n";
    return;
  }
  if (single) {
    out.finish();
    return;
  }
  for (size_t i = 0; i < result.sequences.size(); ++i) {
    std::cout << "== prompt " << result.sequences[i].prompt_index << ", sequence "
              << int64_t(i) % config.num_return_sequences << " ==\n";
    StdoutStream block(tok.get());
    block.push(result.sequences[i].tokens);
    block.finish();
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand(
      "generate",
      "Continue prompts (GPT-2) or answer them (T5: the prompt is the encoder input) with greedy decoding, "
      "sampling or beam search, following transformers' generate(). Options left out come from the model's "
      "generation_config.json, then transformers' defaults.\n"
      "Output: the generated text (special tokens dropped) streams to stdout; beam search prints at the end. "
      "With several prompts or --num-return-sequences > 1, each result is printed after generation under a "
      "'== prompt I, sequence R ==' line. --json prints {\"ids\": [new token ids], \"text\": ...} (+ "
      "\"score\" "
      "with beams) for one result, else a list of those objects with \"prompt\" and \"sequence\" indices, "
      "prompt-major. Without a tokenizer in the model folder (--prompt-ids only), ids replace text.\n"
      "Batches: repeat --prompt or --prompt-ids; every prompt is generated independently of the others.");
  cmd->add_option("model", a->model, "Model folder, HF cache entry, built-in name or Hub id")->required();
  cmd->add_option("--prompt", a->prompts,
                  "Prompt text (repeat for a batch); none: read one prompt from stdin");
  cmd->add_option("--prompt-ids", a->prompt_ids,
                  "Prompt as token ids, e.g. 464,2068,7586 (repeat for a batch); skips the tokenizer");
  cmd->add_option("--max-new-tokens", a->max_new_tokens,
                  "Most tokens to generate (default: 20, or max_length)");
  cmd->add_option("--min-new-tokens", a->min_new_tokens, "Suppress eos until this many tokens are generated");
  cmd->add_option("--num-beams", a->num_beams, "Beam search with this many beams (1: greedy or sampling)");
  cmd->add_option("--length-penalty", a->length_penalty,
                  "Beam scores are divided by generated_length ** this (>0 favours longer sequences)");
  cmd->add_option("--early-stopping", a->early_stopping,
                  "Beam search stop rule: true (once num_beams are done), false (heuristic), never");
  cmd->add_option("--num-return-sequences", a->num_return_sequences,
                  "Sequences per prompt: the best beams, or independent samples");
  cmd->add_flag("--do-sample", a->do_sample, "Sample instead of taking the most likely token");
  cmd->add_option("--temperature", a->temperature, "Sampling temperature (> 0)");
  cmd->add_option("--top-k", a->top_k, "Sample from the k most likely tokens (0: off; default 50)");
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling: smallest set with probability mass > p, in (0, 1]");
  cmd->add_option("--seed", a->seed, "Seed for sampling (default: random); same seed, same output");
  cmd->add_option("--repetition-penalty", a->repetition_penalty,
                  "Penalise tokens already present (>1 discourages)");
  cmd->add_option("--no-repeat-ngram-size", a->no_repeat_ngram_size, "Never repeat an n-gram of this size");
  add_runtime_options(cmd, a->runtime);
  cmd->add_flag("--stats", a->stats, "Print the number of tokens generated and tokens/s on stderr");
  cmd->add_option("--revision", a->revision, "Hub revision");
  cmd->add_flag("--json", a->json, "Print JSON at the end instead of streaming text");
  cmd->callback([a, cmd] { run_generate(*a, GivenOptions{cmd}); });
}

}  // namespace kestrel::cli
