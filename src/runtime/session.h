#pragma once
// A Session runs one model's plan on one backend for a batch of independent rows and owns their KV caches.
// It is the only thing generate/ talks to: it knows nothing of GPT-2 vs T5 beyond "is there an encoder
// input".
//
//   start(rows)      : decoder-only (GPT-2): rows are the prompts, all tokens are fed, logits of the last
//                      position of each row are returned.  Encoder-decoder (T5): rows are the encoder inputs;
//                      the encoder runs once, cross-attention K/V are computed once, and the decoder is fed
//                      `decoder_prefix` (default [decoder_start_token_id]) for each row.
//   step(tokens)     : appends tokens[b] to row b's decoder sequence; returns logits [B, vocab] for the last
//                      position of each row (or every appended position with all_positions).
//   reorder(src)     : row i becomes a copy of old row src[i] (beam search); B may change (expand for beams).
// Rows have independent lengths: batched output equals running each row alone.
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "core/error.h"

namespace kestrel {

using TokenRows = std::vector<std::vector<int64_t>>;

// What a backend needs to pick each row's next token itself, so that only token ids leave it (CUDA): the
// greedy / sampling processors of transformers (generate/logits_processors.h), except no-repeat n-grams; or,
// for beam search, each row's best `candidates` continuations. generate/ fills it from its GenerationConfig.
struct TokenChoice {
  bool sample = false;
  float repetition_penalty = 1.0f, temperature = 1.0f;
  int64_t top_k = 0;  // 0: off
  double top_p = 1.0;
  int64_t min_tokens_to_keep = 1;
  std::vector<int64_t> eos_token_ids;
  // Beam search (greedy): instead of one token, the best `candidates` of log_softmax, then the processors,
  // plus Row::add, per row: best first, ties to the lower token (top_k_indices' order).
  int64_t candidates = 0;
  struct Row {
    int64_t logits_row = 0;            // the row of this forward's logits it picks from
    std::span<const int64_t> history;  // its decoder sequence so far (repetition penalty)
    bool suppress_eos = false;         // shorter than its minimum length
    double uniform = 0.0;              // sampling: its draw in [0, 1)
    float add = 0.0f;                  // candidates: the beam's running score
  };
  std::vector<Row> rows;
  // A picked token of kNothingLeft: every score was filtered out. kChooseOnHost: the backend could not for
  // this row; process last_logits(row.logits_row) on the host instead.
  static constexpr int64_t kNothingLeft = -1, kChooseOnHost = -2;
};

// What a backend chose: a token per row, or with candidates, rows * candidates tokens (-1 past the end of a
// short vocabulary) and their scores.
struct ChosenTokens {
  std::vector<int64_t> tokens;
  std::vector<float> scores;
};

class Session {
 public:
  virtual ~Session() = default;
  virtual bool is_encoder_decoder() const = 0;
  virtual int64_t vocab_size() const = 0;
  // Longest decoder sequence the model accepts (GPT-2 n_positions; T5 has no hard limit: INT64_MAX).
  virtual int64_t max_positions() const = 0;

  // Returns logits: [B, vocab] (last position of each row), or, with all_positions, the logits of every fed
  // decoder position, row after row ([sum of fed lengths, vocab]).
  virtual std::vector<float> start(const TokenRows& rows, const TokenRows& decoder_prefix = {},
                                   bool all_positions = false) = 0;
  virtual std::vector<float> step(const TokenRows& tokens, bool all_positions = false) = 0;
  virtual void reorder(const std::vector<int64_t>& src_rows) = 0;
  virtual int64_t batch_size() const = 0;
  // Rows a start() (or a reorder that expands them) may hold: the memory planned up front (CUDA: its
  // max_batch), or no limit.
  virtual int64_t max_rows() const { return std::numeric_limits<int64_t>::max(); }
  // Decoder tokens fed so far for row b (prompt + generated for GPT-2; prefix + generated for T5).
  virtual int64_t decoder_length(int64_t b) const = 0;

  // Backends that pick tokens themselves return true for the choices they support; start_and_choose and
  // step_and_choose then run start / step (one token a row, last positions) and return the token of each
  // choice row, and last_logits reads a row of that forward's logits when a row came back kChooseOnHost.
  virtual bool chooses_tokens(const TokenChoice&) const { return false; }
  virtual ChosenTokens start_and_choose(const TokenRows&, const TokenRows&, const TokenChoice&) {
    internal_error("start_and_choose: this backend does not choose tokens");
  }
  virtual ChosenTokens step_and_choose(const TokenRows&, const TokenChoice&) {
    internal_error("step_and_choose: this backend does not choose tokens");
  }
  virtual std::vector<float> last_logits(int64_t) const {
    internal_error("last_logits: this backend does not choose tokens");
  }

  // Plain greedy decoding a step ahead (CUDA): for choices where runs_ahead() is true, greedy_ahead(tokens)
  // feeds row b its one token and returns each row's argmax id, as step_and_choose would; with run_ahead the
  // backend has already started the step after it, fed those ids, so a next greedy_ahead() with exactly
  // them returns without the device waiting for the host in between. Any other call first waits for that
  // step and drops it: the rows hold what greedy_ahead returned, no more.
  virtual bool runs_ahead(const TokenChoice&) const { return false; }
  virtual std::vector<int64_t> greedy_ahead(const TokenRows&, bool) {
    internal_error("greedy_ahead: this backend does not run greedy steps ahead");
  }
};

}  // namespace kestrel
