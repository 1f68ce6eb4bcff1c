// kestrel_gpu_driver: one model, one device, one precision; everything the GPU tests and benchmark need from
// Kestrel in one process, so a single device call can check parity and time it.
//
//   kestrel_gpu_driver --model DIR --device cuda|cpu [--precision fp32|fp16|bf16] --prompts FILE.json
//                      [--score FILE.json] [--new-tokens N] [--bench-runs R] [--bench-only] [--max-batch B]
//                      [--max-length L] --out PREFIX
//
// prompts: [[ids], ...] (GPT-2 prompts, or T5 encoder inputs). Writes PREFIX.json with:
//   score    (when --score, or for GPT-2 the prompts themselves): log_softmax of every fed decoder position,
//   rows
//            after rows, as float32 in PREFIX.score.f32 ([positions, vocab]);
//   greedy   N greedy tokens per row through start()/step() (logits on the host), and the log-probs of every
//   step
//            in PREFIX.steps.f32 ([N, rows, vocab]);
//   greedy_device (cuda) the same through greedy_start()/greedy_step() (argmax on the GPU; ids only);
//   bench    (cuda, --bench-runs R) milliseconds of each run of prompt + N greedy tokens (e2e_ms), of its
//            prompt pass up to the first token (first_ms), and of each decode step of the last run (step_ms).
//            Times are CUDA events on the session's stream around calls that synchronize it.
//   generate (--generate-bench greedy|sampling|beams, with --bench-runs R) wall milliseconds of each of R
//            warmed kestrel::generate() calls (N new tokens, eos never ending them early): the product's
//            path, token choice included (KESTREL_CHOOSE_ON_HOST=1 processes logits on the host instead).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "generate/generator.h"
#include "runtime/cuda_session.h"
#include "runtime/engine.h"

using namespace kestrel;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

void log_softmax_rows(std::vector<float>& x, int64_t V) {
  for (size_t r = 0; r < x.size() / size_t(V); ++r) {
    float* row = x.data() + r * size_t(V);
    const float m = *std::max_element(row, row + V);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(row[i] - m));
    const float lse = m + float(std::log(sum));
    for (int64_t i = 0; i < V; ++i) row[i] -= lse;
  }
}

std::vector<int64_t> argmax_rows(const std::vector<float>& x, int64_t V) {
  std::vector<int64_t> ids;
  for (size_t r = 0; r < x.size() / size_t(V); ++r) {
    const float* row = x.data() + r * size_t(V);
    ids.push_back(std::max_element(row, row + V) - row);
  }
  return ids;
}

void write_f32(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * 4));
  if (!f) fail("cannot write " + path);
}

TokenRows read_rows(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("cannot read " + path);
  return json::parse(f).get<TokenRows>();
}

int run(int argc, char** argv) {
  std::string model_dir, device = "cuda", precision = "fp16", prompts_path, score_path, out;
  int new_tokens = 0, bench_runs = 0;
  std::string generate_bench;
  bool bench_only = false;
  int64_t max_batch = 8, max_length = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) fail("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--model")
      model_dir = next();
    else if (a == "--device")
      device = next();
    else if (a == "--precision")
      precision = next();
    else if (a == "--prompts")
      prompts_path = next();
    else if (a == "--score")
      score_path = next();
    else if (a == "--new-tokens")
      new_tokens = std::stoi(next());
    else if (a == "--bench-runs")
      bench_runs = std::stoi(next());
    else if (a == "--max-batch")
      max_batch = std::stoll(next());
    else if (a == "--max-length")
      max_length = std::stoll(next());
    else if (a == "--out")
      out = next();
    else if (a == "--generate-bench")
      generate_bench = next();
    else if (a == "--bench-only")
      bench_only = true;
    else
      fail("unknown option " + a);
  }
  if (model_dir.empty() || prompts_path.empty() || out.empty())
    fail("--model, --prompts and --out are required");

  const auto t_load = Clock::now();
  auto model = Model::load(model_dir);
  json report;
  report["load_ms"] = ms_since(t_load);
  SessionOptions so;
  so.max_batch = max_batch;
  CudaSessionOptions co;
  co.precision = precision;
  co.max_batch = max_batch;
  co.max_length = max_length;
  const auto t_open = Clock::now();
  std::unique_ptr<Session> session;
  if (device == "cpu")
    session = open_session(*model, so);
  else
    session = open_cuda_session(*model, so, co);
  report["open_ms"] = ms_since(t_open);
  auto* gpu = dynamic_cast<CudaSession*>(session.get());
  if (gpu) {
    report["gpu"] = gpu->device_name();
    report["planned_bytes"] = gpu->planned_bytes();
    report["precision_notes"] = gpu->precision_notes();
  }
  const int64_t V = session->vocab_size();
  const TokenRows prompts = read_rows(prompts_path);

  // Teacher-forced scoring of every position (prefill path).
  if (!bench_only) {
    std::vector<float> logits;
    if (session->is_encoder_decoder()) {
      if (!score_path.empty()) logits = session->start(prompts, read_rows(score_path), true);
    } else {
      logits = session->start(prompts, {}, true);
    }
    if (!logits.empty()) {
      log_softmax_rows(logits, V);
      write_f32(out + ".score.f32", logits);
      report["score_rows"] = logits.size() / size_t(V);
    }
  }

  // Greedy through start()/step(): the decode path (CUDA graphs on the GPU) with logits on the host.
  if (new_tokens > 0 && !bench_only) {
    std::vector<float> all_steps;
    std::vector<std::vector<int64_t>> greedy(prompts.size());
    std::vector<float> logits = session->start(prompts);
    for (int n = 0; n < new_tokens; ++n) {
      const auto ids = argmax_rows(logits, V);
      log_softmax_rows(logits, V);
      all_steps.insert(all_steps.end(), logits.begin(), logits.end());
      TokenRows next;
      for (size_t b = 0; b < ids.size(); ++b) {
        greedy[b].push_back(ids[b]);
        next.push_back({ids[b]});
      }
      if (n + 1 < new_tokens) logits = session->step(next);
    }
    write_f32(out + ".steps.f32", all_steps);
    report["greedy"] = greedy;
  }

  // Greedy with the argmax on the GPU, and the benchmark of that loop.
  if (gpu && new_tokens > 0) {
    // Milliseconds of GPU stream time across f(); each timer owns its events, so timings can nest.
    struct Timer {
      cudaEvent_t start = nullptr, stop = nullptr;
      Timer() {
        cudaEventCreate(&start);
        cudaEventCreate(&stop);
      }
      ~Timer() {
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
      }
    };
    Timer outer, inner;
    auto time_with = [&](Timer& t, auto&& f) {
      cudaEventRecord(t.start, gpu->stream());
      f();
      cudaEventRecord(t.stop, gpu->stream());
      cudaEventSynchronize(t.stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, t.start, t.stop);
      return double(ms);
    };
    auto timed = [&](auto&& f) { return time_with(inner, f); };
    std::vector<double> first, steps;
    // Steps one at a time (each timed: the host waits for its ids before the next starts), or each started
    // before the host reads the ids of the one before (greedy_ahead: how generate() runs plain greedy).
    auto generate = [&](bool timing, bool ahead) {
      std::vector<std::vector<int64_t>> tokens(prompts.size());
      std::vector<int64_t> ids;
      const double f = timed([&] { ids = gpu->greedy_start(prompts); });
      if (timing) first.push_back(f);
      for (int n = 0; n < new_tokens; ++n) {
        for (size_t b = 0; b < ids.size(); ++b) tokens[b].push_back(ids[b]);
        if (n + 1 == new_tokens) break;
        if (ahead) {
          TokenRows fed;
          for (int64_t id : ids) fed.push_back({id});
          ids = gpu->greedy_ahead(fed, n + 2 < new_tokens);
          continue;
        }
        const double s = timed([&] { ids = gpu->greedy_step(ids); });
        if (timing) steps.push_back(s);
      }
      return tokens;
    };
    report["greedy_device"] = generate(false, false);
    report["greedy_ahead"] = generate(false, true);
    if (bench_runs > 0) {
      for (int w = 0; w < 2; ++w) generate(false, false);
      std::vector<double> e2e;
      for (int r = 0; r < bench_runs; ++r) {
        if (r + 1 == bench_runs) steps.clear();  // keep the last run's steps
        e2e.push_back(time_with(outer, [&] { generate(true, false); }));
      }
      // The same runs with steps run ahead: e2e, and per generated token after the first.
      for (int w = 0; w < 2; ++w) generate(false, true);
      first.clear();
      std::vector<double> e2e_ahead, token_ms;
      for (int r = 0; r < bench_runs; ++r) {
        e2e_ahead.push_back(time_with(outer, [&] { generate(true, true); }));
        if (new_tokens > 1) token_ms.push_back((e2e_ahead.back() - first.back()) / double(new_tokens - 1));
      }
      report["bench"] = {{"e2e_ms", e2e},
                         {"first_ms", first},
                         {"step_ms", steps},
                         {"e2e_ahead_ms", e2e_ahead},
                         {"token_ahead_ms", token_ms},
                         {"graphs", gpu->captured_graphs()},
                         {"timer", "cuda_events"}};
    }
  }
  if (!generate_bench.empty() && new_tokens > 0 && bench_runs > 0) {
    GenerationConfig c;
    c.max_new_tokens = new_tokens;
    c.min_new_tokens = new_tokens;
    c.eos_token_ids = {0};
    if (generate_bench == "sampling") {
      c.do_sample = true;
      c.top_k = 50;
      c.top_p = 0.9;
      c.seed = 1;
    } else if (generate_bench == "beams") {
      c.num_beams = 4;
    } else if (generate_bench != "greedy") {
      fail("--generate-bench: expected greedy, sampling or beams, not '" + generate_bench + "'");
    }
    std::vector<double> wall;
    for (int r = 0; r < bench_runs + 2; ++r) {
      const auto t0 = Clock::now();
      generate(*session, prompts, c);
      if (r >= 2) wall.push_back(ms_since(t0));
    }
    report["generate"] = {{"mode", generate_bench}, {"wall_ms", wall}};
  }
  std::ofstream(out + ".json") << report.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const kestrel::Error& e) {
    std::cerr << "kestrel_gpu_driver: " << e.what() << "\n";
    return e.exit_code();
  }
}
