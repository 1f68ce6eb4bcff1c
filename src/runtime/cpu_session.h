#pragma once
// The CPU Session: runs a Plan's programs with the CPU kernels. Rows are independent: each has its own KV
// caches and length, and the tokens of all rows of a forward are concatenated into one [tokens, width] matrix
// so every GEMM serves the whole batch, while attention runs row by row.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "build/packed_weights.h"
#include "models/plan.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace kestrel {

class CpuSession final : public Session {
 public:
  CpuSession(const Model& model, const SessionOptions& options);

  bool is_encoder_decoder() const override { return !plan_.encoder.empty(); }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_positions() const override { return plan_.max_positions; }
  std::vector<float> start(const TokenRows& rows, const TokenRows& decoder_prefix = {},
                           bool all_positions = false) override;
  std::vector<float> step(const TokenRows& tokens, bool all_positions = false) override;
  void reorder(const std::vector<int64_t>& src_rows) override;
  int64_t batch_size() const override { return int64_t(rows_.size()); }
  int64_t max_rows() const override {
    return options_.max_batch > 0 ? options_.max_batch : std::numeric_limits<int64_t>::max();
  }
  int64_t decoder_length(int64_t b) const override;

  // While set, every op's output records its largest |value| (over the rows it wrote) into *ranges, keyed by
  // the plan op; the CUDA session's precision calibration reads them (runtime/calibration.h).
  void record_ranges(std::map<const Op*, float>* ranges) { ranges_ = ranges; }

 private:
  // One row's state. Caches are [length, kv_width] per slot, K and V apart, grown as tokens arrive.
  struct RowState {
    int64_t length = 0;  // decoder tokens fed so far
    std::vector<std::vector<float>> self_k, self_v;
    int64_t encoder_length = 0;
    std::vector<std::vector<float>> cross_k, cross_v;
  };
  struct Buffer {
    int64_t width = 0, rows = 0;
    std::vector<float> data;
    int64_t bias_offset = 0;  // PositionBias buffers: index of relative distance 0
    float* row(int64_t r) { return data.data() + r * width; }
  };
  struct BoundOp {
    const Op* op = nullptr;
    std::vector<const PackedTensor*> w;
    int in = -1, out = -1, bias = -1;  // buffer indices
  };
  // What one forward feeds: new tokens per row, and where each row's tokens start in the concatenation.
  struct Feed {
    std::vector<int64_t> offset;  // size B + 1
    std::vector<int64_t> ids, positions;
    bool all_positions = false;
    bool encoder = false;
  };

  std::vector<BoundOp> bind(const std::vector<Op>& ops);
  void check_tokens(const TokenRows& rows, const char* what, bool decoder) const;
  std::vector<float> forward(const std::vector<BoundOp>& program, const TokenRows& tokens, bool encoder,
                             bool all_positions);
  void run_op(const BoundOp& b, Feed& feed);
  void run_attention(const BoundOp& b, Feed& feed);
  Buffer& buffer(int index) { return buffers_[size_t(index)]; }

  const Model& model_;
  const Plan& plan_;
  const PackedWeights& weights_;
  SessionOptions options_;
  int64_t vocab_ = 0;
  std::vector<std::string> buffer_names_;
  std::vector<Buffer> buffers_;
  std::vector<BoundOp> encoder_, decoder_;
  std::vector<RowState> rows_;
  std::map<const Op*, float>* ranges_ = nullptr;
};

}  // namespace kestrel
