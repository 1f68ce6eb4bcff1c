#include "generate/logits_processors.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace kestrel {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool in_vocab(int64_t id, size_t vocab) {
  return id >= 0 && uint64_t(id) < vocab;
}
}  // namespace

void apply_repetition_penalty(std::span<float> scores, std::span<const int64_t> history, float penalty) {
  // transformers gathers the original scores of the seen tokens and scatters the penalised values back, so a
  // token seen twice is penalised once.
  std::vector<char> seen(scores.size(), 0);
  for (int64_t id : history)
    if (in_vocab(id, scores.size())) seen[size_t(id)] = 1;
  for (size_t v = 0; v < scores.size(); ++v)
    if (seen[v]) scores[v] = scores[v] < 0 ? scores[v] * penalty : scores[v] / penalty;
}

void apply_no_repeat_ngram(std::span<float> scores, std::span<const int64_t> history, int64_t n) {
  const int64_t len = int64_t(history.size());
  if (n <= 0 || len < n) return;
  // The next token completes an n-gram that starts with the last n-1 tokens; every earlier window whose first
  // n-1 tokens equal them bans its last token.
  const auto prefix = history.subspan(size_t(len - (n - 1)));
  for (int64_t start = 0; start + n <= len; ++start) {
    if (std::equal(prefix.begin(), prefix.end(), history.begin() + start)) {
      const int64_t banned = history[size_t(start + n - 1)];
      if (in_vocab(banned, scores.size())) scores[size_t(banned)] = kNegInf;
    }
  }
}

void suppress_eos_below_min_length(std::span<float> scores, int64_t current_length, int64_t min_length,
                                   std::span<const int64_t> eos_token_ids) {
  if (current_length >= min_length) return;
  for (int64_t e : eos_token_ids)
    if (in_vocab(e, scores.size())) scores[size_t(e)] = kNegInf;
}

void apply_temperature(std::span<float> scores, float temperature) {
  for (float& s : scores) s /= temperature;
}

void apply_top_k(std::span<float> scores, int64_t k, int64_t min_tokens_to_keep) {
  k = std::min<int64_t>(std::max(k, min_tokens_to_keep), int64_t(scores.size()));
  if (k <= 0) return;
  std::vector<float> sorted(scores.begin(), scores.end());
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
  const float kth = sorted[size_t(k - 1)];
  for (float& s : scores)
    if (s < kth) s = kNegInf;
}

void apply_top_p(std::span<float> scores, double top_p, int64_t min_tokens_to_keep) {
  // As transformers: sort ascending, softmax, cumulative sum; drop tokens whose cumulative mass is
  // <= 1 - top_p (the low tail), but always keep the min_tokens_to_keep largest.
  const size_t n = scores.size();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  std::vector<float> sorted(n);
  for (size_t i = 0; i < n; ++i) sorted[i] = scores[size_t(order[i])];
  std::vector<double> probs;
  if (!softmax(sorted, probs)) return;
  const float threshold = float(1.0 - top_p);
  float cumulative = 0;
  const size_t keep_from = n > size_t(min_tokens_to_keep) ? n - size_t(min_tokens_to_keep) : 0;
  std::vector<char> remove(n, 0);
  for (size_t i = 0; i < n; ++i) {
    cumulative += float(probs[i]);
    if (i < keep_from && cumulative <= threshold) remove[size_t(order[i])] = 1;
  }
  for (size_t v = 0; v < n; ++v)
    if (remove[v]) scores[v] = kNegInf;
}

LogitsProcessorChain::LogitsProcessorChain(const GenerationConfig& config) : c_(config) {
  // transformers keeps one non-eos token beyond the eos ids with beams, so a beam can always continue.
  min_tokens_to_keep_ = config.num_beams > 1 ? int64_t(config.eos_token_ids.size()) + 1 : 1;
  if (config.num_beams > 1 && config.eos_token_ids.empty()) min_tokens_to_keep_ = 2;
}

void LogitsProcessorChain::operator()(std::span<float> scores, std::span<const int64_t> history,
                                      int64_t min_length) const {
  if (c_.repetition_penalty != 1.0) apply_repetition_penalty(scores, history, float(c_.repetition_penalty));
  if (c_.no_repeat_ngram_size > 0) apply_no_repeat_ngram(scores, history, c_.no_repeat_ngram_size);
  if (min_length > 0)
    suppress_eos_below_min_length(scores, int64_t(history.size()), min_length, c_.eos_token_ids);
  if (!c_.do_sample) return;
  if (c_.temperature != 1.0) apply_temperature(scores, float(c_.temperature));
  if (c_.top_k != 0) apply_top_k(scores, c_.top_k, min_tokens_to_keep_);
  if (c_.top_p < 1.0) apply_top_p(scores, c_.top_p, min_tokens_to_keep_);
}

void log_softmax_inplace(std::span<float> scores) {
  float max = kNegInf;
  for (float s : scores) max = std::max(max, s);
  if (max == kNegInf) return;
  double sum = 0;
  for (float s : scores) sum += std::exp(double(s) - double(max));
  const float log_sum = float(std::log(sum));
  for (float& s : scores) s = (s - max) - log_sum;
}

bool softmax(std::span<const float> scores, std::vector<double>& probs) {
  probs.assign(scores.size(), 0.0);
  float max = kNegInf;
  for (float s : scores) max = std::max(max, s);
  if (max == kNegInf) return false;
  double sum = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    probs[i] = scores[i] == kNegInf ? 0.0 : std::exp(double(scores[i]) - double(max));
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;
  return true;
}

int64_t argmax(std::span<const float> scores) {
  int64_t best = 0;
  for (size_t i = 1; i < scores.size(); ++i)
    if (scores[i] > scores[size_t(best)]) best = int64_t(i);
  return best;
}

std::vector<int64_t> top_k_indices(std::span<const float> scores, int64_t k) {
  k = std::min<int64_t>(k, int64_t(scores.size()));
  std::vector<int64_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int64_t a, int64_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  idx.resize(size_t(k));
  return idx;
}

}  // namespace kestrel
