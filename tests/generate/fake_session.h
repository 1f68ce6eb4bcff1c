#pragma once
// A Session whose logits are a pure function of a row's (encoder input, decoder sequence), for testing
// generate/ without a model. It checks the contract as it goes: step() gets one token per row, reorder()
// indices are valid. And expect_same_sequences(), for comparing two generate() results.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

#include "generate/generator.h"
#include "runtime/session.h"

namespace kestrel::testing {

using LogitsFn = std::function<std::vector<float>(const std::vector<int64_t>& encoder,
                                                  const std::vector<int64_t>& decoder)>;

// Pseudo-random but deterministic logits in [-4, 4) from a hash of the decoder sequence (and encoder input).
inline std::vector<float> hashed_logits(const std::vector<int64_t>& enc, const std::vector<int64_t>& dec,
                                        int64_t vocab) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&](int64_t v) { h = (h ^ uint64_t(v + 7)) * 1099511628211ULL; };
  for (int64_t t : enc) mix(t);
  mix(-1);
  for (int64_t t : dec) mix(t);
  std::vector<float> out(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) {
    uint64_t x = h + uint64_t(v) * 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    out[size_t(v)] = float(double(x >> 11) * 0x1.0p-53 * 8.0 - 4.0);
  }
  return out;
}

class FakeSession : public Session {
 public:
  FakeSession(int64_t vocab, LogitsFn fn, bool encoder_decoder = false,
              int64_t max_positions = std::numeric_limits<int64_t>::max())
      : vocab_(vocab), fn_(std::move(fn)), encdec_(encoder_decoder), max_positions_(max_positions) {}

  bool is_encoder_decoder() const override { return encdec_; }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_positions() const override { return max_positions_; }

  std::vector<float> start(const TokenRows& rows, const TokenRows& decoder_prefix, bool) override {
    ++starts;
    enc_.clear();
    dec_.clear();
    for (size_t i = 0; i < rows.size(); ++i) {
      if (encdec_) {
        enc_.push_back(rows[i]);
        dec_.push_back(decoder_prefix.at(i));
      } else {
        enc_.push_back({});
        dec_.push_back(rows[i]);
      }
    }
    batch_history.push_back(int64_t(rows.size()));
    return logits();
  }
  std::vector<float> step(const TokenRows& tokens, bool) override {
    if (tokens.size() != dec_.size()) throw std::logic_error("step: wrong number of rows");
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i].size() != 1) throw std::logic_error("step: expected one token per row");
      dec_[i].push_back(tokens[i][0]);
      if (int64_t(dec_[i].size()) > max_positions_) throw std::logic_error("step: past max_positions");
    }
    ++steps;
    batch_history.push_back(int64_t(tokens.size()));
    return logits();
  }
  void reorder(const std::vector<int64_t>& src) override {
    TokenRows enc, dec;
    for (int64_t s : src) {
      if (s < 0 || size_t(s) >= dec_.size()) throw std::logic_error("reorder: bad source row");
      enc.push_back(enc_[size_t(s)]);
      dec.push_back(dec_[size_t(s)]);
    }
    enc_ = std::move(enc);
    dec_ = std::move(dec);
    ++reorders;
  }
  int64_t batch_size() const override { return int64_t(dec_.size()); }
  int64_t decoder_length(int64_t b) const override { return int64_t(dec_.at(size_t(b)).size()); }

  int starts = 0, steps = 0, reorders = 0;
  std::vector<int64_t> batch_history;  // rows of every start/step call

 protected:
  // Takes back the last token step() fed every row (a session dropping a step it ran ahead).
  void unfeed_last() {
    for (auto& d : dec_) d.pop_back();
  }

 private:
  std::vector<float> logits() const {
    std::vector<float> out;
    for (size_t i = 0; i < dec_.size(); ++i) {
      auto l = fn_(enc_[i], dec_[i]);
      out.insert(out.end(), l.begin(), l.end());
    }
    return out;
  }
  int64_t vocab_;
  LogitsFn fn_;
  bool encdec_;
  int64_t max_positions_;
  TokenRows enc_, dec_;
};

// got's sequences are want's: the same tokens, eos and (beam search) scores.
inline void expect_same_sequences(const GenerationResult& got, const GenerationResult& want) {
  ASSERT_EQ(got.sequences.size(), want.sequences.size());
  for (size_t i = 0; i < want.sequences.size(); ++i) {
    EXPECT_EQ(got.sequences[i].tokens, want.sequences[i].tokens) << "sequence " << i;
    EXPECT_EQ(got.sequences[i].ended_with_eos, want.sequences[i].ended_with_eos) << "sequence " << i;
    EXPECT_EQ(got.sequences[i].score, want.sequences[i].score) << "sequence " << i;
  }
}

}  // namespace kestrel::testing
