#pragma once
// A Session runs one model's plan on one backend for a batch of independent rows and owns their KV caches.
// It is the only thing generate/ talks to: it knows nothing of GPT-2 vs T5 beyond "is there an encoder input".
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
#include <memory>
#include <span>
#include <vector>

namespace kestrel {

using TokenRows = std::vector<std::vector<int64_t>>;

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
  // Decoder tokens fed so far for row b (prompt + generated for GPT-2; prefix + generated for T5).
  virtual int64_t decoder_length(int64_t b) const = 0;
};

}  // namespace kestrel
