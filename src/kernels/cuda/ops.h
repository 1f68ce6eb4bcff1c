#pragma once
// The CUDA op set: the same ops as kernels/cpu/ops.h, on device pointers, in fp32, fp16 or bf16. Every
// function enqueues work on `stream` and returns at once; nothing here allocates device memory except the
// GEMM context's workspace, so a session can plan all memory up front and capture a decode step in a CUDA
// graph. Elements are addressed as row-major [rows, width] matrices. "T" below is the compute dtype of an op
// (F32, F16 or BF16); accumulation is always fp32. Nothing here knows GPT-2 from T5.
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "kernels/act.h"
#include "kernels/cuda/argmax_key.h"
#include "kernels/cuda/staged_wait.cuh"

struct CUstream_st;

namespace kestrel::cuda {

using Stream = CUstream_st*;

using Act = kernels::Act;

// Throws kestrel::Error naming `what` when a CUDA runtime call failed (also the last launch error).
void check(int cuda_error, const char* what);
// Checks the last kernel launch.
void check_launch(const char* kernel);

// Bytes per element of a compute dtype; fails for anything but F32/F16/BF16.
size_t element_size(DType t);

// dst[n] = convert(src[n]) between any two of F32, F16, BF16.
void convert(const void* src, DType src_t, void* dst, DType dst_t, int64_t n, Stream stream);
// dst[c * ld + r] = convert(src[r * C + c]) for a row-major [R, C] src: R rows written as R columns of dst
// (uploading a weight transposed, a block of rows at a time).
void convert_transposed(const void* src, DType src_t, int64_t R, int64_t C, void* dst, DType dst_t,
                        int64_t ld, Stream stream);

// A cuBLASLt handle, its workspace and the algorithms chosen per GEMM shape.
class GemmContext {
 public:
  GemmContext();
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;
  // Bytes of device memory the context holds (its workspace), for memory planning.
  static size_t workspace_bytes();

  struct Impl;  // defined in gemm.cu
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Rows at or under this count go through the hand-written GEMV (the weight streamed once with 16-byte loads,
// the norm before it fused in); larger ones through cuBLASLt with a fused epilogue. Measured on an H200
// (GPT-2 XL decode step): 1 row 2.45 ms through the GEMV; 4 rows 5.8 ms through the GEMV, where its
// arithmetic per weight load no longer hides under the loads; 8 rows 2.55 ms and 32 rows 3.3 ms through
// cuBLASLt.
constexpr int64_t kGemvMaxRows = 1;

// y[M,N] (dtype yt) = act(x[M,K] · W[N,K]ᵀ + bias[N]); x and W share dtype wt; bias (may be null) has dtype
// yt. With `residual`, y += that instead (y is usually the fp32 residual stream).
// Within a CUDA graph, decode-sized calls run under programmatic dependent launch (launch.cuh).
void linear(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* W, DType wt, int64_t N,
            const void* bias, Act act, bool residual, void* y, DType yt, Stream stream);

// linear() with the weight stored transposed, Wt [K, N] (in x out), always through cuBLASLt: the layer
// whose decode-sized form is part of ffn() below.
void linear_in_out(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* Wt, DType wt, int64_t N,
                   const void* bias, Act act, bool residual, void* y, DType yt, Stream stream);

// Gated FFN: h = x · [W0; W1]ᵀ, y[M,F] = act(h[:, :F]) * h[:, F:] (+= with residual). `scratch` is an fp32
// [M, 2F] buffer used above the GEMV row limit.
void gated_linear(GemmContext& ctx, const void* x, int64_t M, int64_t K, const void* W01, DType wt, int64_t F,
                  Act act, bool residual, void* y, DType yt, float* scratch, Stream stream);

// The input rows of a decode-sized linear layer (gemv below): x has dtype xt (fp32 or the weight dtype); row
// m of the input is x[rows[m]] when `rows` is given, and is normalised on the way in when `gamma` is given
// (exactly norm() below with those parameters, rounded to the weight dtype).
struct LinearInput {
  const void* x = nullptr;
  DType xt = DType::F32;
  const int32_t* rows = nullptr;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  bool rms = false;
  float eps = 0.0f, out_scale = 1.0f;
};

// True when gemv() can gather, normalise or convert an input of M rows of K elements (it stages them in
// shared memory); otherwise the input must already be plain rows in the weight dtype.
bool gemv_stages_input(int64_t M, int64_t K, DType wt);

// linear() / gated_linear() for M <= kGemvMaxRows rows, with the input described by `in` (see LinearInput).
// With `argmax` (fp32 outputs, not gated), argmax[m] is also raised to row m's argmax key as argmax_rows()
// does, so a greedy step needs no kernel after its LM head.
void gemv(const LinearInput& in, int64_t M, int64_t K, const void* W, DType wt, int64_t N, const void* bias,
          Act act, bool gated, bool residual, void* y, DType yt, Stream stream,
          unsigned long long* argmax = nullptr);

// A decode step's feed-forward block for one row, as one kernel (ffn.cu). With x the fp32 residual row
// in.x[D] and n = norm(x) as `in` describes it (rounded to the weight dtype, as gemv() stages it):
//   h = act(n · W1ᵀ + b1), or gated (W1 = [W0; W1], no b1): h = act(n · W0ᵀ) * (n · W1ᵀ);
//   x += h · W2ᵀ + b2,
// where the down projection W2 [D, F] is given transposed, W2t [F, D]. h is rounded to `ht` (F32 or wt), the
// dtype the two-GEMV form would store it in; b1 has dtype ht, b2 is fp32. Blocks add their partial sums into
// x with float atomics, so the order of the cross-block sum varies in fp32's last bits.
struct FfnArgs {
  LinearInput in;
  int64_t D = 0, F = 0;
  const void* W1 = nullptr;
  const void* b1 = nullptr;
  DType wt = DType::F16;
  Act act = Act::Identity;
  bool gated = false;
  DType ht = DType::F16;
  const void* W2t = nullptr;
  const float* b2 = nullptr;
  // Zero before the session's first call, then only ffn()'s and attention()'s with the QKV GEMV fused in: how
  // many of a call's blocks have staged their input (ffn.cu, arrive_staged). Calls sharing it must run one
  // after another.
  unsigned long long* staged = nullptr;
  // Its fault flag is set when a call's blocks waited for each other longer than wait_ns: they were not all
  // resident at once, so the call's results are wrong (staged_wait.cuh). The caller must check it after the
  // stream synchronises, and fail.
  BlockWait wait;
};
// Whether ffn() runs a block with model width D, hidden width F and weights in wt.
bool ffn_supported(int64_t D, int64_t F, DType wt);
void ffn(const FfnArgs& args, Stream stream);

// y[M,D] (dtype yt) = norm(x[M,D] (dtype xt)) * gamma (+ beta) * out_scale. gamma/beta are fp32; beta may be
// null. rms: x / sqrt(mean(x²) + eps) (T5); otherwise (x - mean) / sqrt(var + eps) (LayerNorm). x may equal
// y.
void norm(const void* x, DType xt, int64_t M, int64_t D, const float* gamma, const float* beta, bool rms,
          float eps, float out_scale, void* y, DType yt, Stream stream);

// y[t,:] (fp32) = table[ids[t], :] (+ pos_table[positions[t], :]); tables have dtype table_t. Ids and
// positions are checked by the caller.
void embedding(const int32_t* ids, const int32_t* positions, int64_t T, const void* table,
               const void* pos_table, DType table_t, int64_t D, float* y, Stream stream);

// y[r,:] = x[src_rows[r], :] for r < R (dtype t, width D).
void gather_rows(const void* x, const int32_t* src_rows, int64_t R, int64_t D, DType t, void* y,
                 Stream stream);

// Writes K and V of T tokens into per-row caches: token t (of batch row row[t], at position pos[t]) copies
// src[t, k_offset : k_offset + I] to cache_k[(phys[row[t]] * max_len + pos[t]) * I ...] and likewise V.
void store_kv(const void* src, int64_t src_stride, int64_t k_offset, int64_t v_offset, int64_t I, int64_t T,
              const int32_t* row, const int32_t* pos, const int32_t* phys, int64_t max_len, DType t,
              void* cache_k, void* cache_v, Stream stream);

// The GEMV that feeds a decode attention with its output projection fused in (AttentionArgs::qkv), run inside
// the attention kernel: y = norm(in) · Wᵀ + bias over `parts` · heads · head_dim rows (query, key and value
// for self-attention, the query for cross-attention), one row.
struct AttentionQkv {
  LinearInput in;  // the fp32 residual row, normalised on the way in (gamma set)
  int64_t K = 0;
  const void* W = nullptr;     // [parts · heads · head_dim, K] in the attention's dtype
  const void* bias = nullptr;  // [parts · heads · head_dim] in the attention's dtype, or null
  int parts = 0;
  void* y = nullptr;  // the output row, which q (and fresh) point into
  // Zero before the session's first call, then only these kernels' and ffn()'s (staged_wait.cuh): per head,
  // its blocks that have written their features; all blocks that have read the residual row.
  unsigned long long* head_counters = nullptr;  // [heads]
  unsigned long long* staged = nullptr;
  BlockWait wait;
  int smem_rows = 0;  // weight rows a block prefetches into shared memory (set by attention())
};

// Attention for T query tokens, all pointers on the device. Query token t belongs to batch row tok_row[t] and
// sits at key position tok_pos[t]; it sees keys j < key_count[row] (and j <= tok_pos[t] when causal), key j
// of that row stored at k + (key_base[row] + j) * kv_stride + head * head_dim. Scores, softmax and the
// weighted sum stay in registers and shared memory; only the output (and, when split, per-split partial sums)
// reach device memory.
struct AttentionArgs {
  const void* q = nullptr;
  int64_t q_stride = 0;
  void* k = nullptr;  // written only with `fresh` (below)
  void* v = nullptr;
  int64_t kv_stride = 0;
  // Upper bound of any row's key count (the session's --max-length): sizes the score buffer.
  int64_t max_keys = 0;
  // Decode with the KV-cache store fused in (every row feeds exactly one token): the key and value at
  // position tok_pos[t] are read from fresh + t * fresh_stride + fresh_k_offset / fresh_v_offset (the QKV
  // output) and written into k / v there, instead of a separate store_kv pass. Keys before it come from the
  // cache.
  const void* fresh = nullptr;
  int64_t fresh_stride = 0, fresh_k_offset = 0, fresh_v_offset = 0;
  // Every key and value the kernel reads (but `fresh`'s) was written by an earlier forward: they may be
  // loaded before pdl_wait(), overlapping the kernel before this one (decode self- and cross-attention).
  bool cache_ready = false;
  const int32_t* key_base = nullptr;
  const int32_t* key_count = nullptr;
  const int32_t* tok_row = nullptr;
  const int32_t* tok_pos = nullptr;
  int64_t T = 0;
  int heads = 0, head_dim = 0;
  float scale = 1.0f;
  bool causal = false;
  // T5 relative-position bias: score += bias_table[bucket[key_pos - query_pos + bucket_center] * heads +
  // head].
  const float* bias_table = nullptr;
  const int32_t* bucket = nullptr;
  int64_t bucket_center = 0;
  void* out = nullptr;
  int64_t out_stride = 0;
  DType dtype = DType::F32;
  // Keys are split into `splits` ranges handled by separate blocks (long decode contexts fill the GPU); then
  // `partials` must hold T * heads * splits * (head_dim + 2) floats.
  int splits = 1;
  float* partials = nullptr;
  // T * heads zero-initialised counters: with them the last split block of each (token, head) merges the
  // partials itself and resets its counter; without, a second kernel merges.
  int* split_counters = nullptr;
  // Prompt passes: the query tokens of batch row b are q_base[b] .. q_base[b] + q_count[b] - 1, over `rows`
  // rows of at most max_queries tokens. With them, fp16 / bf16 attention runs on tensor cores, 64 queries
  // sharing each tile of keys (attention_tc.cu).
  const int32_t* q_base = nullptr;
  const int32_t* q_count = nullptr;
  int rows = 0;
  int64_t max_queries = 0;
  // Decode (one token a row, splits = 1): the attention output projection fused in. With proj_wt set the
  // kernel writes no `out`: block (t, h, c) multiplies head h's output into columns [c·C, (c+1)·C) of rows
  // h·head_dim .. (h+1)·head_dim - 1 of proj_wt ([heads·head_dim, proj_n] in the compute dtype: the
  // projection uploaded transposed, so those rows are contiguous), and adds the products, plus proj_bias
  // (fp32, by head 0's blocks), into the fp32 residual row proj_out + t·proj_n with atomics (in no fixed
  // order). The column slices C are sized so every slice is prefetched into shared memory before pdl_wait().
  const void* proj_wt = nullptr;
  const float* proj_bias = nullptr;
  float* proj_out = nullptr;
  int64_t proj_n = 0;
  int proj_cols = 0;  // columns of a slice (set by attention())
  // Cached keys and values (positions 0 .. stage_keys - 1 of the row) that the projecting kernel copies into
  // shared memory before pdl_wait() (set by attention(): heads too wide for its register prefetch).
  int stage_keys = 0;
  // One row (T = 1) with the projection fused in: the GEMV producing q, k, v fused in too (qkv.W set), when
  // every block fits on the GPU at once (attention() checks; otherwise it runs gemv() first). The session
  // sets it only with KESTREL_ATTN_QKV=1 (slower on an H100: kernels/cuda/NOTES.md).
  AttentionQkv qkv;
};
constexpr int kMaxHeadDim = 256;
void attention(const AttentionArgs& a, Stream stream);
// Whether attention() can take `a` with its `fresh` fields set (head rows 16-byte aligned).
bool attention_can_fuse_store(const AttentionArgs& a);
// Whether attention() can take `a` with its proj_* fields set (decode, 16-byte aligned heads and rows).
constexpr int64_t kMaxProjectRows = 8;
bool attention_can_project(const AttentionArgs& a);

// The decode step of a batch of one token as a single persistent kernel (step_kernel.cu says how): the ops
// below, in order, with a grid-wide barrier between them; the weights of every linear op are streamed
// continuously, across the barriers. Device memory for the program (step_program_bytes) comes from the
// caller; run_step_program may be captured in a CUDA graph.
enum class StepKind : int32_t { Embed, Linear, Attention };
struct StepEmbed {  // embedding() of one token
  const int32_t* ids = nullptr;
  const int32_t* positions = nullptr;
  const void* table = nullptr;
  const void* pos_table = nullptr;  // may be null
  DType table_t = DType::F32;
  int64_t D = 0;
  float* y = nullptr;
};
struct StepLinear {  // gemv() of one row (in.rows unused)
  LinearInput in;
  int64_t K = 0;
  const void* W = nullptr;
  DType wt = DType::F32;
  int64_t N = 0;  // output features (F when gated)
  const void* bias = nullptr;
  Act act = Act::Identity;
  bool gated = false, residual = false;
  void* y = nullptr;
  DType yt = DType::F32;
};
struct StepOp {
  StepKind kind = StepKind::Embed;
  StepEmbed embed;
  StepLinear linear;
  AttentionArgs attention;  // one query token (T = 1) of batch row 0; splits are chosen on the device
};
// Whether the step kernel runs `op` (alignment, staging limits); a step with any other op runs op by op.
bool step_kernel_supports(const StepOp& op);
size_t step_program_bytes(size_t n_ops);
// Copies `ops` into `program` (step_program_bytes(ops.size()) bytes of device memory) and waits.
void upload_step_program(const std::vector<StepOp>& ops, void* program, Stream stream);
void run_step_program(const void* program, size_t n_ops, Stream stream);

// Greedy argmax of R rows of fp32 logits [R, V], the first index on ties (as torch.argmax), as one 64-bit key
// a row: keys[r] (zero beforehand) is raised to the largest key of row r's logits; argmax_index() decodes it.
// One kernel; gemv() can do the same in its epilogue (its `argmax`), which saves even that.
constexpr int64_t kArgmaxSlices = 64;
void argmax_rows(const float* logits, int64_t R, int64_t V, unsigned long long* keys, Stream stream);

// Feeds each of R rows the argmax of its last greedy step, on the device (a step run ahead, without the
// host between two steps): ids[r] = argmax_index(keys[r]), positions[r] and key_counts[r] (the row's token
// position and its cached keys, the step's token metadata) one further, keys[r] = 0 for the step to raise.
void advance_greedy(unsigned long long* keys, int64_t R, int32_t* ids, int32_t* positions,
                    int32_t* key_counts, Stream stream);

// The next token of each of R rows (or its best candidates, for beam search) from fp32 logits [*, V], with
// transformers' greedy / sampling / beam processors
// (generate/logits_processors.cpp defines them; kernels/cuda/choose.cu says how each is done here). Row r
// reads logits row rows[r].logits_row and writes ids[r]: the token, -1 when every score was filtered out, or
// kChooseOnHost when top-p had more than kMaxSorted candidates (the caller then processes that row itself).
constexpr int kMaxSorted = 1024;
constexpr int32_t kChooseOnHost = -2;
struct ChooseRow {
  int32_t logits_row = 0;
  int32_t history_begin = 0, history_count = 0;  // the row's decoder sequence in `history`
  int32_t suppress_eos = 0;                      // below the minimum length: eos ids get -inf
  double uniform = 0;                            // sampling: a draw in [0, 1)
  float add = 0;                                 // candidates: added to every processed score
};
struct ChooseArgs {
  const float* logits = nullptr;
  int64_t V = 0, R = 0;
  const ChooseRow* rows = nullptr;   // device, R entries
  const int32_t* history = nullptr;  // device
  const int32_t* eos = nullptr;      // device, n_eos ids
  int n_eos = 0;
  bool sample = false;
  float repetition_penalty = 1.0f, temperature = 1.0f;
  int top_k = 0;  // 0: off; else already max(top_k, min_keep) and applied only when below V
  bool top_p = false;
  float top_p_threshold = 0.0f;  // float(1 - top_p), as the host compares it
  int min_keep = 1;
  // Beam search (candidates > 0, greedy only): log-softmax first (the processors then act on log-probs),
  // plus rows[r].add; the best `candidates` tokens of each row and their scores go to ids / scores
  // [R, candidates].
  int candidates = 0;
  float* scores = nullptr;
  float* work = nullptr;  // R * V floats
  int32_t* ids = nullptr;
};
void choose_tokens(const ChooseArgs& a, Stream stream);

}  // namespace kestrel::cuda
