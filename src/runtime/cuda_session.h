#pragma once
// The CUDA Session: runs the same Plan as CpuSession on one NVIDIA GPU, in fp32, fp16 or bf16.
//  - Memory is planned once, up front, from --max-batch and --max-length: weights (converted to the compute
//    dtype, or fp32 where calibration says so), every activation buffer, the KV caches of max_batch rows, and
//    the GEMM workspace, as one allocation. If it does not fit in the GPU's free memory the constructor fails
//    before any work, naming the sizes.
//  - In fp16, a calibration pass decides which tensors stay out of fp16 (runtime/calibration.h).
//  - The residual stream (Embed / residual Linear outputs) and the logits stay fp32 whatever the precision;
//    GEMMs that add into the residual stream accumulate in fp32 straight into it (cuBLASLt beta = 1, or the
//    GEMV epilogue), so a layer's output never passes through a 16-bit buffer on its way into the stream.
//  - KV caches are [max_batch, max_length, kv_width] per slot; a batch row points at a physical cache row, so
//    reorder() (beam search) copies only rows that are duplicated.
//  - A decode step (every row fed one token, last-position logits) is captured once per (batch, split) shape
//    in a CUDA graph and replayed; per step the host uploads one small block of token metadata. Its kernels
//    run under programmatic dependent launch (kernels/cuda/launch.cuh); the KV-cache store runs inside
//    attention, and so does the attention's output projection (up to kProjectMaxKeys keys, up to
//    one row: project_max_rows()); at batch 1 each norm runs inside the GEMV it feeds and large feed-forward
//    blocks are one kernel, so a GPT-2 layer is three to four kernels.
//  - Token choice stays on the GPU (chooses_tokens): greedy, and sampling with repetition penalty, minimum
//    length, temperature, top-k and top-p (top-p when top-k leaves at most cuda::kMaxSorted candidates), by
//    kernels/cuda/choose.cu; plain greedy is an argmax inside the decode step's graph. Per token the host
//    reads back only the ids. greedy_start / greedy_step are that plain greedy path for tools.
// Without KESTREL_HAVE_CUDA (no nvcc at configure time) this header still compiles, and open_cuda_session
// fails with a clear message.
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "models/plan.h"
#include "runtime/engine.h"
#include "runtime/session.h"

struct CUstream_st;

namespace kestrel {

namespace cuda {
struct StepLinear;
struct LinearInput;
struct AttentionArgs;
struct BlockWait;
}  // namespace cuda

struct CudaSessionOptions {
  std::string precision = "fp16";  // fp32 | fp16 | bf16
  int64_t max_batch = 8;           // rows of KV cache planned up front (beams count as rows)
  int64_t max_length = 0;  // tokens per row (decoder sequence; also the encoder input); 0: min(model, 1024)
  int device_index = 0;
  // No kernel that sums across blocks with atomics (fused_ffn, fused_attention): results identical run to
  // run. Also set by KESTREL_DETERMINISTIC=1.
  bool deterministic = false;
};

// Parses "fp32" / "fp16" / "bf16"; a kestrel::Error naming the option otherwise.
DType parse_precision(const std::string& name);

std::unique_ptr<Session> open_cuda_session(const Model& model, const SessionOptions& options,
                                           const CudaSessionOptions& cuda);

// True when this build has the CUDA backend and the driver reports at least one GPU (`--device auto`).
bool cuda_device_available();

#ifdef KESTREL_HAVE_CUDA

class CudaSession final : public Session {
 public:
  CudaSession(const Model& model, const SessionOptions& options, const CudaSessionOptions& cuda);
  ~CudaSession() override;
  CudaSession(const CudaSession&) = delete;
  CudaSession& operator=(const CudaSession&) = delete;

  bool is_encoder_decoder() const override { return !plan_.encoder.empty(); }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_positions() const override { return std::min<int64_t>(plan_.max_positions, max_length_); }
  std::vector<float> start(const TokenRows& rows, const TokenRows& decoder_prefix = {},
                           bool all_positions = false) override;
  std::vector<float> step(const TokenRows& tokens, bool all_positions = false) override;
  void reorder(const std::vector<int64_t>& src_rows) override;
  int64_t batch_size() const override { return int64_t(rows_.size()); }
  int64_t max_rows() const override { return max_batch_; }
  int64_t decoder_length(int64_t b) const override;
  bool chooses_tokens(const TokenChoice& choice) const override;
  ChosenTokens start_and_choose(const TokenRows& rows, const TokenRows& decoder_prefix,
                                const TokenChoice& choice) override;
  ChosenTokens step_and_choose(const TokenRows& tokens, const TokenChoice& choice) override;
  std::vector<float> last_logits(int64_t row) const override;
  bool runs_ahead(const TokenChoice& choice) const override;
  std::vector<int64_t> greedy_ahead(const TokenRows& tokens, bool run_ahead) override;

  // Greedy decoding without logits leaving the GPU: the argmax id of each row's last position.
  std::vector<int64_t> greedy_start(const TokenRows& rows, const TokenRows& decoder_prefix = {});
  std::vector<int64_t> greedy_step(const std::vector<int64_t>& next_tokens);

  DType compute_dtype() const { return compute_; }
  size_t planned_bytes() const { return planned_bytes_; }
  int captured_graphs() const { return int(graphs_.size()); }
  std::string device_name() const { return device_name_; }
  // What fp16 calibration changed (tensors kept in fp32, layers given fp32 weights); empty when nothing.
  const std::vector<std::string>& precision_notes() const { return precision_notes_; }
  // The stream all of this session's work runs on (for CUDA-event timing by callers).
  CUstream_st* stream() const;

  struct Impl;  // CUDA-typed state (stream, graphs, device pointers); defined in cuda_session.cpp

 private:
  struct RowState {
    int64_t length = 0;          // decoder tokens fed so far
    int64_t encoder_length = 0;  // T5 encoder tokens
    int64_t phys = 0;            // physical KV-cache row
  };
  struct Buffer {
    std::string name;
    int64_t width = 0;
    DType dtype = DType::F32;
    int64_t capacity = 0;  // rows
    void* data = nullptr;
    int64_t rows = 0;  // rows of the current forward
  };
  struct BoundOp {
    const Op* op;
    std::vector<const void*> w;  // device pointers of op.weights
    DType wt = DType::F32;       // dtype of w[0]
    int in = -1, out = -1;
    int bias = -1;  // index into position_biases_
    // A take_outputs / norm whose result only feeds the linear right after it (directly or through the norm):
    // in decode-sized forwards that linear's GEMV gathers and normalises its input itself (fused_linear).
    bool feeds_gemv = false;
    // A norm that starts a feed-forward block (norm, up projection, down projection added into the norm's
    // source): forwards of one row run the three as one kernel (fused_ffn).
    bool feeds_ffn = false;
    // An attention whose output only feeds the linear after it, which adds into the fp32 residual stream:
    // decode forwards run the two as one kernel (fused_attention).
    bool projected = false;
    // w[0] is uploaded transposed, [in, out] (the down projection of a feed-forward block, or the projection
    // after a projected attention).
    bool w_in_out = false;
  };
  struct PositionBias {
    std::string buffer;
    const float* table = nullptr;  // [num_buckets, heads] fp32
    int32_t* bucket = nullptr;     // bucket of every relative distance in [-max_length, max_length]
  };
  enum class Want { Logits, Ids, Choose, Nothing };
  // What a forward hands back: logits, argmax ids, or the tokens `choice` picks.
  struct Outputs {
    std::vector<float>* logits = nullptr;
    std::vector<int64_t>* ids = nullptr;
    const TokenChoice* choice = nullptr;
    std::vector<float>* scores = nullptr;  // with choice->candidates
  };

  // fp16 only: measures activation ranges (runtime/calibration.h) and moves what would overflow out of fp16:
  // buffer dtypes into fp32, linear layers reading them into fp32 weights, or everything into bf16.
  void calibrate(std::map<std::string, DType>& dtype, std::map<const Op*, DType>& linear_wt);
  void plan_memory(size_t weight_bytes);
  void upload_weights();
  std::vector<BoundOp> bind(const std::vector<Op>& ops);
  void check_tokens(const TokenRows& rows, const char* what, bool decoder) const;
  void check_step(const TokenRows& tokens) const;  // step()'s checks: started, one row of tokens per row
  void forward(const std::vector<BoundOp>& program, const TokenRows& tokens, bool encoder, bool all_positions,
               Want want, const Outputs& outputs);
  // Fails when a kernel's blocks gave up waiting for each other (kernels/cuda/staged_wait.cuh).
  void check_block_fault() const;
  // Waits for a greedy step run ahead (greedy_ahead), if any, and drops it: every other call starts here.
  void settle_ahead();
  // Uploads `choice` and enqueues the choose kernel over the logits of this forward's `out_rows` rows.
  void enqueue_choice(const TokenChoice& choice, int64_t out_rows);
  static constexpr int64_t kMaxChoiceEos = 64;   // eos ids a device-side choice takes
  static constexpr int64_t kMaxCandidates = 64;  // beam candidates a row returns
  size_t choice_rows_bytes() const;              // the per-row part of the uploaded choice block
  size_t choice_block_bytes() const;             // rows, histories and eos ids
  // How a forward runs: its tokens, rows of output, attention splits, and whether every row feeds exactly
  // one token (decode: the KV-cache store happens inside attention).
  struct Pass {
    int64_t T = 0, out_rows = 0;
    int64_t rows = 0, max_row_tokens = 0;  // batch rows, and the most tokens one of them feeds
    int splits_self = 1, splits_cross = 1;
    bool decode = false;
    bool project_self = false, project_cross = false;  // projected attentions run fused (fused_attention)
    unsigned long long* argmax = nullptr;              // a greedy pass: the argmax keys of its logits rows
    bool argmax_fused = false;  // set when the LM head's GEMV raised them (fused_linear)
  };
  // The pass of a forward of `tokens` (each row's past its fed tokens, plus `ahead` for a step run ahead),
  // with its token metadata written into m (MetaLayout's block).
  Pass plan_pass(const TokenRows& tokens, bool encoder, bool all_positions, Want want, int64_t ahead,
                 int32_t* m);
  // plan_pass() of a forward (nothing ahead), its metadata uploaded and the pass enqueued; returns the pass.
  Pass enqueue_forward(const std::vector<BoundOp>& program, const TokenRows& tokens, bool encoder,
                       bool all_positions, Want want);
  // Enqueues `pass` (decode steps through their CUDA graph), reading the metadata already on the device;
  // with `advance`, a greedy step whose rows are first fed the argmax of the step before, on the device.
  void enqueue_pass(const std::vector<BoundOp>& program, Pass& pass, Want want, bool advance);
  void run_program(const std::vector<BoundOp>& program, Pass& pass);
  void run_op(const BoundOp& b, const Pass& pass);
  // Runs program[i..] as one GEMV if it is a take_outputs/norm chain into a decode-sized linear (or, with
  // `call`, only describes that GEMV there); returns the number of ops consumed (0: not fused).
  size_t fused_linear(const std::vector<BoundOp>& program, size_t i, Pass& pass,
                      cuda::StepLinear* call = nullptr);
  // Runs program[i..i+2] as one ffn() kernel when it is a feed-forward block over one row; returns the ops
  // consumed (0: not fused).
  size_t fused_ffn(const std::vector<BoundOp>& program, size_t i);
  // Whether program[at] is an attention that fused_attention() runs with its projection, reading the output
  // of linear `lin` (then the GEMV runs inside the attention kernel: Impl::pending_qkv).
  bool feeds_projected_attention(const std::vector<BoundOp>& program, size_t at, const BoundOp& lin,
                                 const Pass& pass) const;
  // Runs the GEMV left in Impl::pending_qkv on its own, if any.
  void flush_pending_qkv();
  // How the kernels whose blocks wait for each other bound their waits (kernels/cuda/staged_wait.cuh).
  cuda::BlockWait block_wait() const;
  // The input of a GEMV that normalises `src` with norm op `norm` on the way in.
  cuda::LinearInput norm_input(const BoundOp& norm, const Buffer& src) const;
  // Picks the feed-forward blocks ffn() will run and records their down projections in in_out_weights_.
  void plan_ffn_blocks(const std::map<std::string, DType>& dtype);
  // Picks the attention ops whose output projection runs inside them in decode steps and records those
  // projections in in_out_weights_.
  void plan_attention_projections(const std::map<std::string, DType>& dtype);
  // Runs program[i..i+1] as one attention kernel with the output projection fused in when it is a projected
  // attention in a decode pass; returns the ops consumed (0: not fused).
  size_t fused_attention(const std::vector<BoundOp>& program, size_t i, const Pass& pass);
  // The weight, output and epilogue of linear op `lin` over inputs of width K, into L (L.in is the caller's).
  void linear_call(const BoundOp& lin, int64_t K, const Buffer& out, cuda::StepLinear& L) const;
  cuda::AttentionArgs attention_args(const BoundOp& b, const Pass& pass);
  // Builds and uploads the persistent step kernel's program for decode steps of one row (once); false when
  // the plan has an op it cannot run.
  bool prepare_step_kernel(const std::vector<BoundOp>& program, Pass& pass);
  int choose_splits(int64_t T, int64_t heads, int64_t max_keys) const;
  void begin(const TokenRows& rows, const TokenRows& decoder_prefix, Want want, const Outputs& outputs,
             bool all_positions);
  // Plain greedy (argmax inside the decode graph) or the choose kernel.
  static Want want_for(const TokenChoice& choice, int64_t batch);
  Buffer& buffer(int i) { return buffers_[size_t(i)]; }

  const Model& model_;
  const Plan& plan_;
  SessionOptions options_;
  bool deterministic_ = false;
  DType compute_;
  int64_t vocab_ = 0, max_batch_ = 0, max_length_ = 0, max_tokens_ = 0, max_out_rows_ = 0;
  int64_t last_out_rows_ = 0;  // rows of logits the last decoder forward left on the device
  int64_t heads_ = 0, head_dim_ = 0;
  int sm_count_ = 0;
  size_t planned_bytes_ = 0;
  std::string device_name_;
  std::vector<std::string> precision_notes_;
  std::unique_ptr<Impl> impl_;
  std::vector<Buffer> buffers_;
  std::vector<PositionBias> position_biases_;
  std::map<std::string, const void*> weight_ptr_;
  std::map<std::string, DType> weight_dtype_;
  std::set<std::string> in_out_weights_;  // uploaded transposed (read by ffn() and fused_attention())
  std::vector<BoundOp> encoder_, decoder_;
  std::vector<RowState> rows_;
  std::vector<void*> self_k_, self_v_, cross_k_, cross_v_;
  // (batch, self splits, cross splits, argmax included, project_self, project_cross, fed on the device)
  // -> cudaGraphExec_t
  std::map<std::tuple<int64_t, int, int, bool, bool, bool, bool>, void*> graphs_;
  // A greedy step run ahead: whether one is running, the ids it was fed (greedy_ahead's last result), and
  // the pinned slot its keys go to.
  struct Ahead {
    bool running = false;
    TokenRows fed;
    int slot = 0;
  } ahead_;
};

#endif  // KESTREL_HAVE_CUDA

}  // namespace kestrel
