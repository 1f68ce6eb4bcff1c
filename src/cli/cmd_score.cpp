// `kestrel score MODEL`: the log-probability the model gives each token of a text.
//   GPT-2: --text or --ids a,b,c  -> log p(ids[i+1] | ids[..i]) for each i (n-1 values)
//   T5:    --source/--target or --source-ids/--target-ids -> log p(target[i] | source, start + target[..i])
//          (the target tokenized with special tokens, so it ends in </s>, like transformers' labels)
// Also the hidden `kestrel bench-step`: wall-clock timing of a prompt forward and greedy Session::step calls,
// used by bench/cpu_bench.py.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/parse_ids.h"
#include "cli/runtime_options.h"
#include "core/error.h"
#include "io/model_source.h"
#include "runtime/engine.h"
#include "runtime/engine_io.h"
#include "tokenizers/tokenizer.h"

namespace kestrel::cli {

namespace {

struct ScoreArgs {
  std::string model, revision = "main";
  std::string text, ids, source, target, source_ids, target_ids;
  bool json = false;
  RuntimeArgs runtime;
  int new_tokens = 32, repeats = 5;  // bench-step only
};

// log_softmax(logits)[id], accumulated in double.
double log_prob(const float* logits, int64_t vocab, int64_t id) {
  float mx = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(logits[j]) - double(mx));
  return double(logits[id]) - double(mx) - std::log(sum);
}

struct Loaded {
  std::filesystem::path dir;
  std::unique_ptr<Model> model;
  std::unique_ptr<Session> session;
};

Loaded open_model(const ScoreArgs& a) {
  const RuntimeChoice runtime = resolve_runtime(a.runtime);
  ResolveOptions ro;
  ro.revision = a.revision;
  ro.quiet = true;
  Loaded l;
  l.dir = resolve_model(a.model, ro);
  l.model = load_model(l.dir, runtime.load);
  l.session = open_session(*l.model, runtime.session);
  return l;
}

// Ids from either an --X-ids option or text through the model's tokenizer.
std::vector<int64_t> ids_from(const std::string& ids, const char* ids_opt, const std::string& text,
                              const char* text_opt, const Loaded& l, bool add_special) {
  const int64_t vocab = l.model->config().vocab_size();
  if (!ids.empty() && !text.empty()) fail(std::string("give ") + ids_opt + " or " + text_opt + ", not both");
  if (!ids.empty()) return parse_ids(ids, ids_opt, vocab);
  if (text.empty()) fail(std::string("give ") + text_opt + " or " + ids_opt);
  const auto tok = load_tokenizer(l.dir, l.model->config().model_type);
  auto out = tok->encode(text, add_special);
  for (int64_t id : out)
    if (id >= vocab)
      fail(std::string(text_opt) + ": the tokenizer produced id " + std::to_string(id) +
           ", outside the model's vocabulary of " + std::to_string(vocab));
  return out;
}

void run_score(const ScoreArgs& a) {
  Loaded l = open_model(a);
  const int64_t vocab = l.session->vocab_size();
  nlohmann::json j;
  std::vector<int64_t> scored;  // the ids whose log-probabilities are reported
  std::vector<double> lp;
  if (!l.session->is_encoder_decoder()) {
    if (!a.source.empty() || !a.target.empty() || !a.source_ids.empty() || !a.target_ids.empty())
      fail("--source/--target are for encoder-decoder models; use --text or --ids for GPT-2");
    const auto ids = ids_from(a.ids, "--ids", a.text, "--text", l, true);
    if (ids.empty()) fail("score: the prompt is empty");
    if (ids.size() < 2) fail("score: need at least 2 tokens to score (the first one has no prediction)");
    const auto logits = l.session->start({ids}, {}, true);
    for (size_t i = 0; i + 1 < ids.size(); ++i)
      lp.push_back(log_prob(logits.data() + i * vocab, vocab, ids[i + 1]));
    j["ids"] = ids;
    scored.assign(ids.begin() + 1, ids.end());
  } else {
    if (!a.text.empty() || !a.ids.empty())
      fail("--text/--ids are for GPT-2; use --source and --target for T5");
    const auto src = ids_from(a.source_ids, "--source-ids", a.source, "--source", l, true);
    const auto tgt = ids_from(a.target_ids, "--target-ids", a.target, "--target", l, true);
    if (src.empty()) fail("score: the source is empty");
    if (tgt.empty()) fail("score: the target is empty");
    std::vector<int64_t> prefix{l.model->decoder_start_token_id()};
    prefix.insert(prefix.end(), tgt.begin(), tgt.end() - 1);
    const auto logits = l.session->start({src}, {prefix}, true);
    for (size_t i = 0; i < tgt.size(); ++i) lp.push_back(log_prob(logits.data() + i * vocab, vocab, tgt[i]));
    j["source_ids"] = src;
    j["ids"] = tgt;
    scored = tgt;
  }
  double total = 0;
  for (double v : lp) total += v;
  if (a.json) {
    j["logprobs"] = lp;
    j["total"] = total;
    std::cout << j.dump() << "\n";
    return;
  }
  for (size_t i = 0; i < lp.size(); ++i) std::printf("%zu\t%lld\t%.6f\n", i, (long long)scored[i], lp[i]);
  std::printf("total\t%.6f\n", total);
}

// Times Session::start on the prompt and `new_tokens` greedy Session::step calls, `repeats` times.
void run_bench_step(const ScoreArgs& a) {
  Loaded l = open_model(a);
  const int64_t vocab = l.session->vocab_size();
  std::vector<int64_t> prompt, prefix;
  if (l.session->is_encoder_decoder())
    prompt = parse_ids(a.source_ids, "--source-ids", vocab);
  else
    prompt = parse_ids(a.ids, "--ids", vocab);
  if (prompt.empty()) fail("bench-step: give the prompt with --ids (GPT-2) or --source-ids (T5)");
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  nlohmann::json runs = nlohmann::json::array();
  for (int r = 0; r < a.repeats; ++r) {
    const auto t0 = clock::now();
    auto logits = l.session->start({prompt});
    const double prefill = ms(clock::now() - t0);
    std::vector<double> steps;
    for (int s = 0; s < a.new_tokens; ++s) {
      const int64_t next = std::max_element(logits.begin(), logits.end()) - logits.begin();
      const auto t1 = clock::now();
      logits = l.session->step({{next}});
      steps.push_back(ms(clock::now() - t1));
    }
    runs.push_back({{"prefill_ms", prefill}, {"step_ms", steps}});
  }
  std::cout << nlohmann::json{{"prompt_tokens", prompt.size()}, {"runs", runs}}.dump() << "\n";
}

void add_model_options(CLI::App* cmd, ScoreArgs& a) {
  cmd->add_option("model", a.model, "Model folder, HF cache entry, built-in name or Hub id")->required();
  cmd->add_option("--revision", a.revision, "Hub revision");
  add_runtime_options(cmd, a.runtime);
}

}  // namespace

void register_score(CLI::App& app) {
  auto args = std::make_shared<ScoreArgs>();
  auto* cmd = app.add_subcommand("score", "Log-probability of each token of a text (GPT-2) or target (T5)");
  add_model_options(cmd, *args);
  cmd->add_option("--text", args->text, "GPT-2: the text to score");
  cmd->add_option("--ids", args->ids, "GPT-2: token ids to score, e.g. 464,2068,7586");
  cmd->add_option("--source", args->source, "T5: the encoder input text");
  cmd->add_option("--target", args->target, "T5: the target text (tokenized with </s>)");
  cmd->add_option("--source-ids", args->source_ids, "T5: encoder input ids");
  cmd->add_option("--target-ids", args->target_ids, "T5: target ids");
  cmd->add_flag("--json", args->json, "Print {\"ids\": [...], \"logprobs\": [...], \"total\": x}");
  cmd->callback([args] { run_score(*args); });

  auto bargs = std::make_shared<ScoreArgs>();
  auto* bench = app.add_subcommand("bench-step", "Time a prompt forward and greedy decode steps (JSON)");
  bench->group("");  // hidden: a tool for bench/cpu_bench.py, not a user command
  add_model_options(bench, *bargs);
  bench->add_option("--ids", bargs->ids, "GPT-2 prompt ids");
  bench->add_option("--source-ids", bargs->source_ids, "T5 encoder input ids");
  bench->add_option("--new-tokens", bargs->new_tokens, "Decode steps per run")->check(CLI::PositiveNumber);
  bench->add_option("--repeats", bargs->repeats, "Runs")->check(CLI::PositiveNumber);
  bench->callback([bargs] { run_bench_step(*bargs); });
}

}  // namespace kestrel::cli
