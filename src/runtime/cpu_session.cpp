#include "runtime/cpu_session.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/error.h"
#include "kernels/cpu/ops.h"
#include "runtime/kernel_act.h"
#include "runtime/token_checks.h"

namespace kestrel {

CpuSession::CpuSession(const Model& model, const SessionOptions& options)
    : model_(model),
      plan_(model.plan()),
      weights_(model.weights()),
      options_(options),
      vocab_(model.config().vocab_size()) {
  if (options.device != "cpu")
    fail("device '" + options.device +
         "' is not available: this build has only the CPU backend (--device cpu)");
  if (options.threads < 0) fail("threads must be >= 0, got " + std::to_string(options.threads));
  if (options.max_batch < 0) fail("max_batch must be >= 0, got " + std::to_string(options.max_batch));
  cpu::set_threads(options.threads);
  for (const auto& [name, width] : plan_.buffers) {
    buffer_names_.push_back(name);
    Buffer buf;
    buf.width = width;
    buffers_.push_back(std::move(buf));
  }
  encoder_ = bind(plan_.encoder);
  decoder_ = bind(plan_.decoder);
}

std::vector<CpuSession::BoundOp> CpuSession::bind(const std::vector<Op>& ops) {
  auto index = [&](const std::string& name) {
    auto it = std::find(buffer_names_.begin(), buffer_names_.end(), name);
    if (it == buffer_names_.end()) internal_error("plan op uses undeclared buffer '" + name + "'");
    return int(it - buffer_names_.begin());
  };
  std::vector<BoundOp> bound;
  for (const Op& op : ops) {
    BoundOp b;
    b.op = &op;
    for (const auto& w : op.weights) b.w.push_back(&weights_.get(w));
    if (!op.inputs.empty()) b.in = index(op.inputs[0]);
    if (!op.output.empty()) b.out = index(op.output);
    if (!op.bias.empty()) b.bias = index(op.bias);
    bound.push_back(std::move(b));
  }
  return bound;
}

void CpuSession::check_tokens(const TokenRows& rows, const char* what, bool decoder) const {
  std::function<int64_t(size_t)> cached;
  if (decoder) cached = [this](size_t b) { return b < rows_.size() ? rows_[b].length : int64_t{0}; };
  check_token_rows(rows, what, vocab_, cached, plan_.max_positions);
}

std::vector<float> CpuSession::start(const TokenRows& rows, const TokenRows& decoder_prefix,
                                     bool all_positions) {
  if (rows.empty()) fail("start: no rows given");
  if (options_.max_batch > 0 && int64_t(rows.size()) > options_.max_batch)
    fail("start: " + std::to_string(rows.size()) + " rows exceed the session's max_batch of " +
         std::to_string(options_.max_batch));
  rows_.clear();
  if (!is_encoder_decoder()) {
    if (!decoder_prefix.empty())
      fail("start: a decoder prefix is only meaningful for encoder-decoder models");
    check_tokens(rows, "prompt", true);
    rows_.assign(rows.size(), RowState{});
    return forward(decoder_, rows, false, all_positions);
  }
  TokenRows prefix = decoder_prefix;
  if (prefix.empty()) prefix.assign(rows.size(), {model_.decoder_start_token_id()});
  if (prefix.size() != rows.size())
    fail("start: " + std::to_string(prefix.size()) + " decoder prefixes for " + std::to_string(rows.size()) +
         " encoder inputs");
  check_tokens(rows, "encoder input", false);
  check_tokens(prefix, "decoder prefix", true);
  rows_.assign(rows.size(), RowState{});
  forward(encoder_, rows, true, false);
  return forward(decoder_, prefix, false, all_positions);
}

std::vector<float> CpuSession::step(const TokenRows& tokens, bool all_positions) {
  if (rows_.empty()) fail("step: call start() first");
  if (tokens.size() != rows_.size())
    fail("step: " + std::to_string(tokens.size()) + " rows of tokens for a batch of " +
         std::to_string(rows_.size()));
  check_tokens(tokens, "step", true);
  return forward(decoder_, tokens, false, all_positions);
}

void CpuSession::reorder(const std::vector<int64_t>& src_rows) {
  check_reorder(src_rows, int64_t(rows_.size()), options_.max_batch);
  std::vector<RowState> next;
  next.reserve(src_rows.size());
  for (int64_t s : src_rows) next.push_back(rows_[size_t(s)]);
  rows_ = std::move(next);
}

int64_t CpuSession::decoder_length(int64_t b) const {
  check_row_index(b, int64_t(rows_.size()), "decoder_length: row");
  return rows_[size_t(b)].length;
}

std::vector<float> CpuSession::forward(const std::vector<BoundOp>& program, const TokenRows& tokens,
                                       bool encoder, bool all_positions) {
  Feed feed;
  feed.encoder = encoder;
  feed.all_positions = all_positions;
  feed.offset.push_back(0);
  for (size_t b = 0; b < tokens.size(); ++b) {
    const int64_t base = encoder ? 0 : rows_[b].length;
    for (size_t i = 0; i < tokens[b].size(); ++i) {
      feed.ids.push_back(tokens[b][i]);
      feed.positions.push_back(base + int64_t(i));
    }
    feed.offset.push_back(int64_t(feed.ids.size()));
  }
  for (auto& row : rows_) {
    row.self_k.resize(size_t(plan_.self_slots));
    row.self_v.resize(size_t(plan_.self_slots));
    row.cross_k.resize(size_t(plan_.cross_slots));
    row.cross_v.resize(size_t(plan_.cross_slots));
  }
  for (const BoundOp& b : program) {
    run_op(b, feed);
    if (ranges_ && b.out >= 0 && b.op->kind != OpKind::PositionBias) {
      const Buffer& out = buffer(b.out);
      float peak = 0.0f;
      for (int64_t i = 0; i < out.rows * out.width; ++i)
        peak = std::max(peak, std::fabs(out.data[size_t(i)]));
      float& r = (*ranges_)[b.op];
      r = std::max(r, peak);
    }
  }
  if (encoder) {
    for (size_t b = 0; b < tokens.size(); ++b) rows_[b].encoder_length = int64_t(tokens[b].size());
    return {};
  }
  for (size_t b = 0; b < tokens.size(); ++b) rows_[b].length += int64_t(tokens[b].size());
  Buffer& logits = buffers_[size_t(decoder_.back().out)];
  return std::vector<float>(logits.data.begin(), logits.data.begin() + logits.rows * logits.width);
}

void CpuSession::run_op(const BoundOp& b, Feed& feed) {
  const Op& op = *b.op;
  const int64_t T = int64_t(feed.ids.size());
  auto resize = [](Buffer& buf, int64_t rows) {
    buf.rows = rows;
    if (buf.data.size() < size_t(rows * buf.width)) buf.data.resize(size_t(rows * buf.width));
  };
  switch (op.kind) {
    case OpKind::Embed: {
      Buffer& out = buffer(b.out);
      resize(out, T);
      const float* pos = plan_.embed_positions ? b.w[1]->data.data() : nullptr;
      cpu::embedding(feed.ids.data(), feed.positions.data(), T, b.w[0]->data.data(), pos, out.width,
                     out.data.data());
      return;
    }
    case OpKind::PositionBias: {
      // Longest key sequence any row sees in this forward bounds the relative distances needed.
      int64_t longest = 1;
      for (size_t r = 0; r + 1 < feed.offset.size(); ++r) {
        const int64_t n = feed.offset[r + 1] - feed.offset[r];
        longest = std::max(longest, feed.encoder ? n : rows_[r].length + n);
      }
      Buffer& out = buffer(b.out);
      const int64_t max_rel = longest - 1;
      out.rows = 1;
      out.bias_offset = max_rel;
      out.data.resize(size_t(op.heads * (2 * max_rel + 1)));
      cpu::t5_position_bias(b.w[0]->data.data(), op.heads, max_rel, op.bidirectional, op.num_buckets,
                            op.max_distance, out.data.data());
      return;
    }
    case OpKind::Norm: {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (b.out != b.in) resize(out, in.rows);
      const float* beta = b.w.size() > 1 ? b.w[1]->data.data() : nullptr;
      if (op.norm == NormKind::Layer)
        cpu::layer_norm(in.data.data(), in.rows, in.width, b.w[0]->data.data(), beta, float(op.eps),
                        op.out_scale, out.data.data());
      else
        cpu::rms_norm(in.data.data(), in.rows, in.width, b.w[0]->data.data(), float(op.eps), op.out_scale,
                      out.data.data());
      return;
    }
    case OpKind::Linear: {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (!op.residual)
        resize(out, in.rows);
      else if (out.rows != in.rows)
        internal_error("residual linear into '" + op.output + "' with mismatched rows");
      const PackedTensor& W = *b.w[0];
      if (op.gated)
        cpu::gated_linear(in.data.data(), in.rows, in.width, W.data.data(), W.shape[0] / 2,
                          to_kernel_act(op.act), op.residual, out.data.data());
      else
        cpu::linear(in.data.data(), in.rows, in.width, W.data.data(), W.shape[0],
                    b.w.size() > 1 ? b.w[1]->data.data() : nullptr, to_kernel_act(op.act), op.residual,
                    out.data.data());
      return;
    }
    case OpKind::Attention:
      run_attention(b, feed);
      return;
    case OpKind::StoreKV: {
      Buffer& in = buffer(b.in);
      const int64_t I = plan_.kv_width;
      for (size_t r = 0; r + 1 < feed.offset.size(); ++r) {
        auto& k = rows_[r].cross_k[size_t(op.slot)];
        auto& v = rows_[r].cross_v[size_t(op.slot)];
        k.clear();
        v.clear();
        for (int64_t t = feed.offset[r]; t < feed.offset[r + 1]; ++t) {
          const float* src = in.row(t);
          k.insert(k.end(), src, src + I);
          v.insert(v.end(), src + I, src + 2 * I);
        }
      }
      return;
    }
    case OpKind::TakeOutputs: {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (feed.all_positions) {
        resize(out, in.rows);
        std::memcpy(out.data.data(), in.data.data(), size_t(in.rows * in.width) * sizeof(float));
        return;
      }
      const int64_t B = int64_t(feed.offset.size()) - 1;
      resize(out, B);
      for (int64_t r = 0; r < B; ++r)
        std::memcpy(out.row(r), in.row(feed.offset[size_t(r) + 1] - 1), size_t(in.width) * sizeof(float));
      return;
    }
  }
}

void CpuSession::run_attention(const BoundOp& b, Feed& feed) {
  const Op& op = *b.op;
  Buffer& in = buffer(b.in);
  Buffer& out = buffer(b.out);
  const int64_t I = op.heads * op.head_dim;
  out.rows = in.rows;
  if (out.data.size() < size_t(in.rows * I)) out.data.resize(size_t(in.rows * I));

  std::vector<cpu::AttentionSegment> segments;
  for (size_t r = 0; r + 1 < feed.offset.size(); ++r) {
    const int64_t t0 = feed.offset[r], n = feed.offset[r + 1] - t0;
    cpu::AttentionSegment s{};
    s.q = in.row(t0);
    s.q_stride = in.width;
    s.n_queries = n;
    s.out = out.row(t0);
    s.out_stride = I;
    RowState& row = rows_[r];
    switch (op.kv) {
      case KVSource::Local:  // [q | k | v] of this row's tokens
        s.q_start = 0;
        s.k = s.q + I;
        s.v = s.q + 2 * I;
        s.kv_stride = in.width;
        s.n_keys = n;
        break;
      case KVSource::Self: {  // append this forward's K and V, then attend over the whole cache
        auto& k = row.self_k[size_t(op.slot)];
        auto& v = row.self_v[size_t(op.slot)];
        for (int64_t t = t0; t < t0 + n; ++t) {
          const float* src = in.row(t);
          k.insert(k.end(), src + I, src + 2 * I);
          v.insert(v.end(), src + 2 * I, src + 3 * I);
        }
        s.q_start = row.length;
        s.k = k.data();
        s.v = v.data();
        s.kv_stride = I;
        s.n_keys = row.length + n;
        break;
      }
      case KVSource::Cross:
        s.q_start = 0;
        s.k = row.cross_k[size_t(op.slot)].data();
        s.v = row.cross_v[size_t(op.slot)].data();
        s.kv_stride = I;
        s.n_keys = row.encoder_length;
        break;
    }
    segments.push_back(s);
  }
  cpu::AttentionParams p;
  p.heads = op.heads;
  p.head_dim = op.head_dim;
  p.scale = op.scale;
  p.causal = op.causal;
  if (b.bias >= 0) {
    Buffer& bias = buffer(b.bias);
    p.bias = bias.data.data();
    p.bias_offset = bias.bias_offset;
    p.bias_span = 2 * bias.bias_offset + 1;
  }
  cpu::attention(segments, p);
}

}  // namespace kestrel
