// The CUDA Session (see cuda_session.h): memory planning, weight upload, KV caches, running a plan's ops
// through kernels/cuda, and the CUDA graph of the decode step.
#include "runtime/cuda_session.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <set>

#include "core/env.h"
#include "core/error.h"

namespace kestrel {

DType parse_precision(const std::string& name) {
  if (name == "fp32") return DType::F32;
  if (name == "fp16") return DType::F16;
  if (name == "bf16") return DType::BF16;
  fail("--precision: '" + name + "' is not one of fp32, fp16, bf16");
}

}  // namespace kestrel

#ifndef KESTREL_HAVE_CUDA

namespace kestrel {
bool cuda_device_available() {
  return false;
}

std::unique_ptr<Session> open_cuda_session(const Model&, const SessionOptions&, const CudaSessionOptions&) {
  fail(
      "--device cuda: this build of kestrel has no CUDA backend (nvcc was not found when it was configured); "
      "use --device cpu");
}
}  // namespace kestrel

#else

#include <cuda_runtime.h>

#include "build/packed_weights.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "runtime/calibration.h"
#include "runtime/kernel_act.h"
#include "runtime/token_checks.h"

namespace kestrel {

namespace {

using cuda::check;
constexpr size_t kAlign = 256;
constexpr int kMaxSplits = 32;
// Decode attention runs with its output projection fused in up to this many keys a row (see forward()).
// On an H100 it took 3-8 % off decode steps at up to 128 keys and added 27-34 % at 449-512 keys, where the
// split attention kernel and a separate projection stay (kernels/cuda/NOTES.md).
constexpr int64_t kProjectMaxKeys = 256;
// Rows of logits one forward may return (all_positions scoring of long batches needs more passes).
constexpr int64_t kMaxOutputRows = 2048;
constexpr size_t kStagingFloats = size_t(16) << 20;   // 64 MiB of fp32 per upload chunk
constexpr size_t kHeadroomBytes = size_t(256) << 20;  // CUDA context, cuBLASLt kernels, graphs

// Keys a row up to which decode attention runs with its output projection fused in (kProjectMaxKeys;
// KESTREL_ATTN_PROJECT_MAX_KEYS overrides it, for tuning).
int64_t project_max_keys() {
  static const int64_t keys = [] {
    const int64_t v = env_int("KESTREL_ATTN_PROJECT_MAX_KEYS");
    return v > 0 ? v : kProjectMaxKeys;
  }();
  return keys;
}

// Rows of a decode step up to which the projected attention runs (the kernel takes cuda::kMaxProjectRows):
// one. Every column slice's block repeats its head's attention, which stops paying with several rows: GPT-2
// XL decode steps of 8 rows took 4.36 ms fused against 2.68 ms apart, of 2 rows 2.89 against 2.66,
// gpt2-small of 8 rows 0.577 against 0.520 (H100; bench/results/gpu_projection_rows_h100_2026-11-27.txt).
// KESTREL_ATTN_PROJECT_ROWS=n overrides it (tuning).
int64_t project_max_rows() {
  static const int64_t rows = [] {
    const int64_t v = env_int("KESTREL_ATTN_PROJECT_ROWS");
    return v > 0 ? std::min(v, cuda::kMaxProjectRows) : int64_t{1};
  }();
  return rows;
}

// KESTREL_GRAPH_REPLAY=n: each decode step's graph is launched n times (measurements only: a step then
// recomputes the same token n times, so its results stay right; the difference between n = 1 and n > 1 is
// what a step costs outside its graph: the token upload, the launch, the ids' download, the host's wait).
int graph_replays() {
  static const int n = int(std::clamp<int64_t>(env_int("KESTREL_GRAPH_REPLAY"), 1, 64));
  return n;
}

// One row a token (a decode step's input).
TokenRows one_token_rows(const std::vector<int64_t>& tokens) {
  TokenRows rows;
  rows.reserve(tokens.size());
  for (int64_t t : tokens) rows.push_back({t});
  return rows;
}

// KESTREL_STEP_KERNEL=1: decode steps run the persistent step kernel (experimental, kernels/cuda/NOTES.md).
bool step_kernel_requested() {
  return env_switch("KESTREL_STEP_KERNEL") == EnvSwitch::On;
}

// KESTREL_LEAVE_OUT=qkv,attn,ffn,other: one-row passes skip those kernels, so that a variant's decode step
// time shows what each costs inside the graph (measurements only: the results are wrong; see
// kernels/cuda/NOTES.md). qkv is a GEMV that feeds an attention, attn a projected attention, ffn a fused
// feed-forward block, other any other GEMV but the LM head (whose argmax the step needs).
bool left_out(const char* kind, bool decode) {
  static const std::string list = [] {
    const char* v = std::getenv("KESTREL_LEAVE_OUT");
    return v ? "," + std::string(v) + "," : std::string();
  }();
  return decode && !list.empty() && list.find("," + std::string(kind) + ",") != std::string::npos;
}

// How many ops of the plan (encoder and decoder) use each weight.
std::map<std::string, int> weight_use_counts(const Plan& plan) {
  std::map<std::string, int> uses;
  for (const auto* ops : {&plan.encoder, &plan.decoder})
    for (const Op& op : *ops)
      for (const auto& w : op.weights) ++uses[w];
  return uses;
}

// A program's ops but its PositionBias ones (the attention kernels look the bias up themselves), as bind()
// leaves them.
std::vector<const Op*> without_position_bias(const std::vector<Op>& program) {
  std::vector<const Op*> ops;
  for (const Op& op : program)
    if (op.kind != OpKind::PositionBias) ops.push_back(&op);
  return ops;
}

// Whether ops[from..] read buffer `name` before something overwrites it.
bool read_later_in(const std::vector<const Op*>& ops, size_t from, const std::string& name) {
  for (size_t k = from; k < ops.size(); ++k) {
    const Op& op = *ops[k];
    if (std::find(op.inputs.begin(), op.inputs.end(), name) != op.inputs.end()) return true;
    if (op.output == name) return op.kind == OpKind::Linear && op.residual;
  }
  return false;
}

size_t align_up(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

std::string gib(size_t bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f GiB", double(bytes) / double(size_t(1) << 30));
  return s;
}

// The per-forward token metadata, one int32 block uploaded with a single copy. Offsets are in int32 elements.
// The host never writes argmax_keys (64-bit, two elements each), so every upload clears them for the greedy
// argmax (cuda::argmax_rows, or the LM head's GEMV) to raise.
struct MetaLayout {
  int64_t ids, tok_row, tok_pos, take_src, phys, local_base, local_count, self_base, self_count, cross_base,
      cross_count, argmax_keys, total;
  MetaLayout(int64_t max_tokens, int64_t max_out, int64_t max_batch) {
    int64_t o = 0;
    auto take = [&](int64_t n) {
      const int64_t at = o;
      o += (n + 63) / 64 * 64;
      return at;
    };
    ids = take(max_tokens);
    tok_row = take(max_tokens);
    tok_pos = take(max_tokens);
    take_src = take(max_out);
    phys = take(max_batch);
    local_base = take(max_batch);
    local_count = take(max_batch);
    self_base = take(max_batch);
    self_count = take(max_batch);
    cross_base = take(max_batch);
    cross_count = take(max_batch);
    argmax_keys = take(2 * max_out);
    total = o;
  }
};

}  // namespace

struct CudaSession::Impl {
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::GemmContext> gemm;
  char* arena = nullptr;
  size_t arena_used = 0, arena_size = 0;
  MetaLayout meta{0, 0, 0};
  int32_t* meta_dev = nullptr;
  int32_t* meta_host = nullptr;                    // pinned
  unsigned long long* argmax_keys = nullptr;       // in meta_dev
  unsigned long long* argmax_keys_host = nullptr;  // pinned
  // Greedy steps run ahead (greedy_ahead): two pinned slots of max_batch argmax keys, each step's copied into
  // one as it ends, and an event recorded behind each copy.
  unsigned long long* ahead_keys_host = nullptr;
  cudaEvent_t ahead_done[2] = {nullptr, nullptr};
  std::vector<int32_t> meta_scratch;  // the token metadata of a step run ahead (never uploaded)
  void* convert_scratch = nullptr;
  float* gate_scratch = nullptr;
  float* partials = nullptr;
  int* split_counters = nullptr;
  // Counters of the kernels whose blocks wait for each other (kernels/cuda/staged_wait.cuh): blocks that have
  // read the residual row (ffn(), attention() with the QKV GEMV fused in), and per head, blocks that have
  // written their share of its query, key and value; and their fault flag (mapped pinned memory), checked
  // after every forward.
  unsigned long long* staged = nullptr;
  unsigned long long* head_counters = nullptr;
  unsigned* fault_host = nullptr;
  unsigned* fault_dev = nullptr;  // the same flag, as the kernels address it
  // A decode QKV (or cross-attention query) GEMV that fused_linear() left for the attention kernel after it.
  std::optional<cuda::StepLinear> pending_qkv;
  // Device-side token choice: the uploaded block (CudaSession::choice_block_bytes), its pinned host staging,
  // and max_batch rows of scores to process.
  char* choice_dev = nullptr;
  char* choice_host = nullptr;
  float* choice_work = nullptr;
  int32_t* choice_ids = nullptr;  // [max_batch, kMaxCandidates]
  float* candidate_scores = nullptr;
  float* candidate_scores_host = nullptr;  // pinned
  int32_t* choice_ids_host = nullptr;      // pinned
  // The persistent decode-step kernel's program (kernels/cuda/step_kernel.cu): built at the first decode step
  // of one row; step_state 0 = not tried, 1 = ready, -1 = this plan runs op by op.
  void* step_program = nullptr;
  size_t step_program_bytes = 0, step_ops = 0;
  int step_state = 0;

  void* carve(size_t bytes) {
    if (arena_used + align_up(bytes) > arena_size) internal_error("CUDA memory plan under-counted");
    void* p = arena + arena_used;
    arena_used += align_up(bytes);
    return p;
  }
  const int32_t* dev(int64_t offset) const { return meta_dev + offset; }
};

CudaSession::CudaSession(const Model& model, const SessionOptions& options, const CudaSessionOptions& cuda)
    : model_(model),
      plan_(model.plan()),
      options_(options),
      deterministic_(cuda.deterministic || env_flag("KESTREL_DETERMINISTIC")),
      compute_(parse_precision(cuda.precision)),
      vocab_(model.config().vocab_size()),
      impl_(std::make_unique<Impl>()) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    fail(std::string("--device cuda: no usable NVIDIA GPU (") +
         (e != cudaSuccess ? cudaGetErrorString(e) : "none found") + "); use --device cpu");
  if (cuda.device_index < 0 || cuda.device_index >= count)
    fail("--device cuda: GPU " + std::to_string(cuda.device_index) + " does not exist (" +
         std::to_string(count) + " found)");
  check(cudaSetDevice(cuda.device_index), "cudaSetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, cuda.device_index), "cudaGetDeviceProperties");
  device_name_ = prop.name;
  sm_count_ = prop.multiProcessorCount;
  if (prop.major < 8)
    fail("--device cuda: GPU '" + device_name_ + "' has compute capability " + std::to_string(prop.major) +
         "." + std::to_string(prop.minor) +
         "; the CUDA backend needs 8.0 or newer (fp16/bf16 tensor cores); use --device cpu");

  max_batch_ = options.max_batch > 0 ? options.max_batch : cuda.max_batch;
  if (max_batch_ < 1) fail("--max-batch must be >= 1, got " + std::to_string(max_batch_));
  max_length_ = cuda.max_length > 0 ? cuda.max_length : std::min<int64_t>(plan_.max_positions, 1024);
  if (cuda.max_length < 0) fail("--max-length must be >= 1, got " + std::to_string(cuda.max_length));
  if (max_length_ > plan_.max_positions)
    fail("--max-length " + std::to_string(max_length_) + " exceeds the model's " +
         std::to_string(plan_.max_positions) + " positions");
  max_tokens_ = max_batch_ * max_length_;
  max_out_rows_ = std::max(max_batch_, std::min(max_tokens_, kMaxOutputRows));
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops)
      if (op.kind == OpKind::Attention) {
        heads_ = std::max(heads_, op.heads);
        head_dim_ = std::max(head_dim_, op.head_dim);
      }
  if (head_dim_ > cuda::kMaxHeadDim)
    fail("--device cuda: attention head size " + std::to_string(head_dim_) + " exceeds the CUDA backend's " +
         std::to_string(cuda::kMaxHeadDim) + "; use --device cpu");

  // Buffer dtypes: the residual stream (written by Embed, residual Linears, TakeOutputs and ops after it) and
  // the logits are fp32; everything else is in the compute dtype.
  bool after_take = false;
  std::map<std::string, DType> dtype;
  std::map<std::string, int64_t> capacity;
  for (const auto& [name, width] : plan_.buffers) {
    dtype[name] = compute_;
    capacity[name] = max_tokens_;
  }
  for (const auto* ops : {&plan_.encoder, &plan_.decoder}) {
    after_take = false;
    for (const Op& op : *ops) {
      if (op.kind == OpKind::TakeOutputs) after_take = true;
      if (op.output.empty() || op.kind == OpKind::PositionBias) continue;
      if (op.kind == OpKind::Embed || op.kind == OpKind::TakeOutputs ||
          (op.kind == OpKind::Linear && op.residual))
        dtype[op.output] = DType::F32;
      if (after_take) capacity[op.output] = max_out_rows_;
    }
  }
  if (!plan_.decoder.empty()) dtype[plan_.decoder.back().output] = DType::F32;
  std::map<const Op*, DType> linear_wt;  // linear layers whose weights leave the compute dtype
  if (compute_ == DType::F16) calibrate(dtype, linear_wt);
  for (const std::string& note : precision_notes_)
    std::fprintf(stderr, "kestrel: fp16 calibration: %s\n", note.c_str());
  for (const auto& [name, width] : plan_.buffers) {
    bool is_bias = false;
    for (const auto* ops : {&plan_.encoder, &plan_.decoder})
      for (const Op& op : *ops)
        if (op.kind == OpKind::PositionBias && op.output == name) is_bias = true;
    if (is_bias) continue;
    buffers_.push_back(Buffer{name, width, dtype[name], capacity[name]});
  }

  // Weight dtypes follow their role: norm scales and position-bias tables fp32, biases the dtype of the
  // buffer they are added into, matrices and embedding tables the compute dtype.
  auto assign = [&](const std::string& w, DType t) {
    auto [it, fresh] = weight_dtype_.emplace(w, t);
    if (!fresh && it->second != t) internal_error("weight '" + w + "' is used in two dtypes by the plan");
  };
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops) {
      switch (op.kind) {
        case OpKind::Norm:
        case OpKind::PositionBias:
          for (const auto& w : op.weights) assign(w, DType::F32);
          break;
        case OpKind::Embed:
          for (const auto& w : op.weights) assign(w, compute_);
          break;
        case OpKind::Linear:
          assign(op.weights[0], linear_wt.count(&op) ? linear_wt.at(&op) : compute_);
          if (op.weights.size() > 1) assign(op.weights[1], dtype[op.output]);
          break;
        default:
          break;
      }
    }
  plan_ffn_blocks(dtype);
  plan_attention_projections(dtype);
  size_t weight_bytes = 0;
  for (const auto& [name, t] : weight_dtype_)
    weight_bytes += align_up(size_t(shape_numel(plan_.weight(name).shape)) * dtype_size(t));

  check(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  plan_memory(weight_bytes);
  upload_weights();
  encoder_ = bind(plan_.encoder);
  decoder_ = bind(plan_.decoder);
}

CudaSession::~CudaSession() {
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);  // a greedy step run ahead may still be running
  for (cudaEvent_t e : impl_->ahead_done)
    if (e) cudaEventDestroy(e);
  if (impl_->ahead_keys_host) cudaFreeHost(impl_->ahead_keys_host);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
  impl_->gemm.reset();
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
  if (impl_->arena) cudaFree(impl_->arena);
  if (impl_->meta_host) cudaFreeHost(impl_->meta_host);
  if (impl_->argmax_keys_host) cudaFreeHost(impl_->argmax_keys_host);
  if (impl_->fault_host) cudaFreeHost(impl_->fault_host);
  if (impl_->choice_host) cudaFreeHost(impl_->choice_host);
  if (impl_->candidate_scores_host) cudaFreeHost(impl_->candidate_scores_host);
  if (impl_->choice_ids_host) cudaFreeHost(impl_->choice_ids_host);
}

void CudaSession::calibrate(std::map<std::string, DType>& dtype, std::map<const Op*, DType>& linear_wt) {
  if (env_flag("KESTREL_NO_CALIBRATION")) return;
  const std::map<const Op*, float> ranges = measure_activation_ranges(model_, options_.threads);
  const float limit = kFp16Max / kFp16Headroom;
  auto range = [&](const Op& op) {
    auto it = ranges.find(&op);
    return it == ranges.end() ? 0.0f : it->second;
  };
  auto number = [](float v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.3g", double(v));
    return std::string(b);
  };
  std::set<std::string> attention_io;  // must stay in the compute dtype (the attention kernels' contract)
  const std::map<std::string, int> weight_uses = weight_use_counts(plan_);
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops) {
      if (op.kind == OpKind::Attention) attention_io.insert({op.inputs[0], op.output});
      if (op.kind == OpKind::StoreKV) attention_io.insert(op.inputs[0]);
    }
  bool to_bf16 = false;
  auto keep_fp32 = [&](const std::string& buffer, const std::string& why) {
    if (dtype[buffer] != DType::F16) return;
    if (attention_io.count(buffer)) {
      to_bf16 = true;
      precision_notes_.push_back("'" + buffer + "' " + why + " and attention reads it: computing in bf16");
    } else {
      dtype[buffer] = DType::F32;
      precision_notes_.push_back("'" + buffer + "' " + why + ": kept in fp32");
    }
  };
  // 1. Tensors whose measured range leaves fp16's (with headroom) stay in fp32.
  std::map<std::string, float> peak;
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops)
      if (!op.output.empty() && op.kind != OpKind::PositionBias)
        peak[op.output] = std::max(peak[op.output], range(op));
  for (const auto& [name, p] : peak)
    if (p > limit) keep_fp32(name, "reaches |x| = " + number(p));
  // 2. A linear layer reading such values runs in fp32 (its input would otherwise be rounded to the 16-bit
  //    weight dtype; transformers keeps T5's wo in fp32 for the same reason); its output is fp32 too.
  for (const auto* ops : {&plan_.encoder, &plan_.decoder}) {
    std::map<std::string, float> last;  // range of each buffer's latest writer
    for (const Op& op : *ops) {
      if (op.kind == OpKind::Linear && last[op.inputs[0]] > limit) {
        if (weight_uses.at(op.weights[0]) > 1) {
          precision_notes_.push_back("'" + op.weights[0] + "' reads |x| = " + number(last[op.inputs[0]]) +
                                     " but is shared with another op: left in fp16");
        } else {
          linear_wt[&op] = DType::F32;
          precision_notes_.push_back("'" + op.weights[0] + "' reads |x| = " + number(last[op.inputs[0]]) +
                                     ": fp32 weights");
          keep_fp32(op.output, "is written by an fp32 layer");
        }
      }
      if (!op.output.empty()) last[op.output] = range(op);
    }
  }
  if (to_bf16) {  // bf16 has fp32's range: every 16-bit tensor and weight moves there instead
    compute_ = DType::BF16;
    for (auto& [name, t] : dtype)
      if (t == DType::F16) t = DType::BF16;
    linear_wt.clear();
  }
}

void CudaSession::plan_ffn_blocks(const std::map<std::string, DType>& dtype) {
  // By default only blocks of at least kFfnKernelMinBytes of weights: on an H100 the kernel took 4% off GPT-2
  // XL's decode step and 3% off T5-3B's, but made GPT-2 small's (4.5 MiB a block) 2% slower
  // (bench/results/gpu_ffn_variants_h100_2026-11-26.txt). KESTREL_FFN_KERNEL=1 fuses every block it can
  // (tests), =0 none (comparisons); never with --deterministic (the blocks' sums meet in float atomics) or
  // under the persistent step kernel, which reads every weight in its checkpoint layout.
  constexpr size_t kFfnKernelMinBytes = size_t(8) << 20;
  const EnvSwitch ffn_mode = env_switch("KESTREL_FFN_KERNEL");
  if (ffn_mode == EnvSwitch::Off || deterministic_ || step_kernel_requested()) return;
  const std::map<std::string, int> weight_uses = weight_use_counts(plan_);
  for (const auto* program : {&plan_.encoder, &plan_.decoder}) {
    const std::vector<const Op*> ops = without_position_bias(*program);
    for (size_t i = 0; i + 2 < ops.size(); ++i) {
      const Op& norm = *ops[i];
      const Op& up = *ops[i + 1];
      const Op& down = *ops[i + 2];
      if (norm.kind != OpKind::Norm || up.kind != OpKind::Linear || down.kind != OpKind::Linear) continue;
      const std::string& x = norm.inputs[0];
      if (up.inputs[0] != norm.output || down.inputs[0] != up.output || down.output != x || up.residual ||
          !down.residual || down.gated || down.act != Activation::Linear || norm.output == x ||
          up.output == x || read_later_in(ops, i + 3, norm.output) || read_later_in(ops, i + 3, up.output))
        continue;
      const std::string& w_down = down.weights[0];
      const DType wt = weight_dtype_.at(up.weights[0]);
      const int64_t D = plan_.buffers.at(x);
      const int64_t F = plan_.weight(up.weights[0]).shape[0] / (up.gated ? 2 : 1);
      const DType ht = dtype.at(up.output);
      if (weight_uses.at(w_down) != 1 || weight_dtype_.at(w_down) != wt || dtype.at(x) != DType::F32 ||
          (ht != DType::F32 && ht != wt) || plan_.weight(w_down).shape != Shape{D, F} ||
          !cuda::ffn_supported(D, F, wt))
        continue;
      const size_t bytes = size_t(D) * size_t(F) * (up.gated ? 3 : 2) * dtype_size(wt);
      if (ffn_mode != EnvSwitch::On && bytes < kFfnKernelMinBytes) continue;
      in_out_weights_.insert(w_down);
    }
  }
}

void CudaSession::plan_attention_projections(const std::map<std::string, DType>& dtype) {
  // An attention op whose output only feeds the next op, a linear adding into the fp32 residual stream:
  // decode steps run the two as one kernel (attention() with proj_wt), the projection uploaded transposed.
  // KESTREL_ATTN_PROJECT=0 keeps them apart (comparisons); so do --deterministic (the kernel adds the heads'
  // products with atomics) and the persistent step kernel.
  if (env_switch("KESTREL_ATTN_PROJECT") == EnvSwitch::Off || deterministic_ || step_kernel_requested())
    return;
  const std::map<std::string, int> weight_uses = weight_use_counts(plan_);
  const int64_t vec = 16 / int64_t(dtype_size(compute_));
  for (const auto* program : {&plan_.encoder, &plan_.decoder}) {
    const std::vector<const Op*> ops = without_position_bias(*program);
    for (size_t i = 0; i + 1 < ops.size(); ++i) {
      const Op& att = *ops[i];
      const Op& lin = *ops[i + 1];
      if (att.kind != OpKind::Attention || lin.kind != OpKind::Linear || lin.inputs[0] != att.output ||
          !lin.residual || lin.gated || lin.act != Activation::Linear ||
          read_later_in(ops, i + 2, att.output))
        continue;
      const std::string& w = lin.weights[0];
      const int64_t N = plan_.buffers.at(lin.output), K = att.heads * att.head_dim;
      if (weight_uses.at(w) != 1 || weight_dtype_.at(w) != compute_ || dtype.at(lin.output) != DType::F32 ||
          plan_.weight(w).shape != Shape{N, K} || N % vec != 0 ||
          (att.head_dim * int64_t(dtype_size(compute_))) % 16 != 0)
        continue;
      in_out_weights_.insert(w);
    }
  }
}

void CudaSession::plan_memory(size_t weight_bytes) {
  const size_t T = dtype_size(compute_);
  size_t activations = 0;
  for (const Buffer& b : buffers_)
    activations += align_up(size_t(b.capacity * b.width) * dtype_size(b.dtype));
  // Scratch: fp32 inputs converted for 16-bit GEMMs, and the fp32 [rows, 2F] product of gated FFNs.
  size_t convert_bytes = 0, gate_bytes = 0;
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops) {
      if (op.kind != OpKind::Linear) continue;
      auto in = std::find_if(buffers_.begin(), buffers_.end(),
                             [&](const Buffer& b) { return b.name == op.inputs[0]; });
      if (in == buffers_.end()) internal_error("plan op uses undeclared buffer '" + op.inputs[0] + "'");
      if (in->dtype != compute_)
        convert_bytes = std::max(convert_bytes, size_t(in->capacity * in->width) * T);
      if (op.gated)
        gate_bytes = std::max(gate_bytes, size_t(in->capacity * plan_.weight(op.weights[0]).shape[0]) * 4);
    }
  const size_t cache_row = size_t(max_length_ * plan_.kv_width) * T;
  const size_t caches =
      2 * size_t(plan_.self_slots + plan_.cross_slots) * align_up(size_t(max_batch_) * cache_row);
  const size_t partials = size_t(max_batch_ * heads_ * kMaxSplits * (head_dim_ + 2)) * 4;
  const size_t counters = size_t(max_batch_ * heads_) * 4;
  const size_t sync_bytes = size_t(1 + heads_) * sizeof(unsigned long long);  // Impl::staged, head_counters
  size_t luts = 0;
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops)
      if (op.kind == OpKind::PositionBias) luts += align_up(size_t(2 * max_length_ + 1) * 4);
  impl_->meta = MetaLayout(max_tokens_, max_out_rows_, max_batch_);
  const size_t meta = align_up(size_t(impl_->meta.total) * 4) + align_up(choice_block_bytes()) +
                      align_up(size_t(max_batch_ * vocab_) * 4) +
                      2 * align_up(size_t(max_batch_ * kMaxCandidates) * 4) +
                      align_up(cuda::step_program_bytes(plan_.decoder.size()));
  const size_t total = weight_bytes + activations + align_up(convert_bytes) + align_up(gate_bytes) + caches +
                       align_up(partials) + align_up(counters) + align_up(sync_bytes) + luts + meta;
  planned_bytes_ = total + cuda::GemmContext::workspace_bytes();

  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  const size_t staging = kStagingFloats * 4;
  if (planned_bytes_ + staging + kHeadroomBytes > free_bytes)
    fail("--device cuda: the model needs " + gib(planned_bytes_) + " on GPU '" + device_name_ +
         "' (weights " + gib(weight_bytes) + ", KV caches " + gib(caches) + " for --max-batch " +
         std::to_string(max_batch_) + " x --max-length " + std::to_string(max_length_) + ", activations " +
         gib(activations) + ") but only " + gib(free_bytes) +
         " are free; lower --max-batch / --max-length, use --precision fp16, or --device cpu");

  impl_->gemm = std::make_unique<cuda::GemmContext>();
  check(cudaMalloc(reinterpret_cast<void**>(&impl_->arena), total), "allocating the planned GPU memory");
  impl_->arena_size = total;
  for (Buffer& b : buffers_) b.data = impl_->carve(size_t(b.capacity * b.width) * dtype_size(b.dtype));
  if (convert_bytes) impl_->convert_scratch = impl_->carve(convert_bytes);
  if (gate_bytes) impl_->gate_scratch = static_cast<float*>(impl_->carve(gate_bytes));
  auto caches_of = [&](int64_t slots, std::vector<void*>& k, std::vector<void*>& v) {
    for (int64_t s = 0; s < slots; ++s) {
      k.push_back(impl_->carve(size_t(max_batch_) * cache_row));
      v.push_back(impl_->carve(size_t(max_batch_) * cache_row));
    }
  };
  caches_of(plan_.self_slots, self_k_, self_v_);
  caches_of(plan_.cross_slots, cross_k_, cross_v_);
  impl_->partials = static_cast<float*>(impl_->carve(partials));
  impl_->split_counters = static_cast<int*>(impl_->carve(counters));
  check(cudaMemset(impl_->split_counters, 0, counters), "clearing attention split counters");
  impl_->staged = static_cast<unsigned long long*>(impl_->carve(sync_bytes));
  impl_->head_counters = impl_->staged + 1;
  check(cudaMemset(impl_->staged, 0, sync_bytes), "clearing the block counters");
  check(cudaHostAlloc(reinterpret_cast<void**>(&impl_->fault_host), sizeof(unsigned), cudaHostAllocMapped),
        "pinned memory");
  *impl_->fault_host = 0;
  check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&impl_->fault_dev), impl_->fault_host, 0),
        "mapping the block counters' fault flag");
  impl_->meta_dev = static_cast<int32_t*>(impl_->carve(size_t(impl_->meta.total) * 4));
  impl_->argmax_keys = reinterpret_cast<unsigned long long*>(impl_->meta_dev + impl_->meta.argmax_keys);
  check(cudaMallocHost(reinterpret_cast<void**>(&impl_->meta_host), size_t(impl_->meta.total) * 4),
        "pinned memory");
  check(cudaMallocHost(reinterpret_cast<void**>(&impl_->argmax_keys_host), size_t(max_out_rows_) * 8),
        "pinned memory");
  check(cudaMallocHost(reinterpret_cast<void**>(&impl_->ahead_keys_host), size_t(2 * max_batch_) * 8),
        "pinned memory");
  for (cudaEvent_t& e : impl_->ahead_done)
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  impl_->choice_dev = static_cast<char*>(impl_->carve(choice_block_bytes()));
  impl_->choice_work = static_cast<float*>(impl_->carve(size_t(max_batch_ * vocab_) * 4));
  check(cudaMallocHost(reinterpret_cast<void**>(&impl_->choice_host), choice_block_bytes()), "pinned memory");
  impl_->choice_ids = static_cast<int32_t*>(impl_->carve(size_t(max_batch_ * kMaxCandidates) * 4));
  impl_->candidate_scores = static_cast<float*>(impl_->carve(size_t(max_batch_ * kMaxCandidates) * 4));
  for (void** host : {reinterpret_cast<void**>(&impl_->candidate_scores_host),
                      reinterpret_cast<void**>(&impl_->choice_ids_host)})
    check(cudaMallocHost(host, size_t(max_batch_ * kMaxCandidates) * 4), "pinned memory");
  impl_->step_program_bytes = cuda::step_program_bytes(plan_.decoder.size());
  impl_->step_program = impl_->carve(impl_->step_program_bytes);
  check(cudaMemset(impl_->step_program, 0, impl_->step_program_bytes), "clearing the decode step program");
  std::memset(impl_->meta_host, 0, size_t(impl_->meta.total) * 4);

  // Relative-position buckets, computed once on the host with the CPU definition so both backends agree
  // exactly.
  for (const auto* ops : {&plan_.encoder, &plan_.decoder})
    for (const Op& op : *ops) {
      if (op.kind != OpKind::PositionBias) continue;
      PositionBias pb{op.output};
      pb.bucket = static_cast<int32_t*>(impl_->carve(size_t(2 * max_length_ + 1) * 4));
      std::vector<int32_t> lut(size_t(2 * max_length_ + 1));
      for (int64_t r = -max_length_; r <= max_length_; ++r)
        lut[size_t(r + max_length_)] =
            int32_t(cpu::t5_relative_bucket(r, op.bidirectional, op.num_buckets, op.max_distance));
      check(cudaMemcpy(pb.bucket, lut.data(), lut.size() * 4, cudaMemcpyHostToDevice),
            "uploading position buckets");
      position_biases_.push_back(pb);
    }
}

void CudaSession::upload_weights() {
  const PackedWeights& packed = model_.weights();
  float* staging = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&staging), kStagingFloats * 4), "weight upload staging");
  try {
    for (const auto& [name, t] : weight_dtype_) {
      const PackedTensor& src = packed.get(name);
      void* dst = impl_->carve(src.data.size() * dtype_size(t));
      weight_ptr_[name] = dst;
      if (in_out_weights_.count(name)) {  // [out, in] rows, a block at a time, written as columns
        const Shape& shape = plan_.weight(name).shape;
        const int64_t R = shape[0], C = shape[1];
        const int64_t block = std::max<int64_t>(1, int64_t(kStagingFloats) / C);
        for (int64_t r = 0; r < R; r += block) {
          const int64_t n = std::min(block, R - r);
          check(cudaMemcpyAsync(staging, src.data.data() + r * C, size_t(n * C) * 4, cudaMemcpyHostToDevice,
                                impl_->stream),
                "uploading weights");
          cuda::convert_transposed(staging, DType::F32, n, C,
                                   static_cast<char*>(dst) + size_t(r) * dtype_size(t), t, R, impl_->stream);
          check(cudaStreamSynchronize(impl_->stream), "uploading weights");
        }
        continue;
      }
      for (size_t at = 0; at < src.data.size(); at += kStagingFloats) {
        const size_t n = std::min(kStagingFloats, src.data.size() - at);
        char* out = static_cast<char*>(dst) + at * dtype_size(t);
        if (t == DType::F32) {
          check(cudaMemcpyAsync(out, src.data.data() + at, n * 4, cudaMemcpyHostToDevice, impl_->stream),
                "uploading weights");
        } else {
          check(cudaMemcpyAsync(staging, src.data.data() + at, n * 4, cudaMemcpyHostToDevice, impl_->stream),
                "uploading weights");
          cuda::convert(staging, DType::F32, out, t, int64_t(n), impl_->stream);
        }
        check(cudaStreamSynchronize(impl_->stream), "uploading weights");
      }
    }
  } catch (...) {
    cudaFree(staging);
    throw;
  }
  cudaFree(staging);
  // Position-bias tables are read by the attention kernel.
  for (auto& pb : position_biases_)
    for (const auto* ops : {&plan_.encoder, &plan_.decoder})
      for (const Op& op : *ops)
        if (op.kind == OpKind::PositionBias && op.output == pb.buffer)
          pb.table = static_cast<const float*>(weight_ptr_.at(op.weights[0]));
}

std::vector<CudaSession::BoundOp> CudaSession::bind(const std::vector<Op>& ops) {
  auto index = [&](const std::string& name) {
    for (size_t i = 0; i < buffers_.size(); ++i)
      if (buffers_[i].name == name) return int(i);
    internal_error("plan op uses undeclared buffer '" + name + "'");
  };
  std::vector<BoundOp> bound;
  for (const Op& op : ops) {
    if (op.kind == OpKind::PositionBias) continue;  // the attention kernel looks the bias up per score
    BoundOp b;
    b.op = &op;
    for (const auto& w : op.weights) b.w.push_back(weight_ptr_.at(w));
    if (!op.weights.empty()) b.wt = weight_dtype_.at(op.weights[0]);
    if (!op.inputs.empty()) b.in = index(op.inputs[0]);
    if (!op.output.empty()) b.out = index(op.output);
    if (!op.bias.empty()) {
      for (size_t i = 0; i < position_biases_.size(); ++i)
        if (position_biases_[i].buffer == op.bias) b.bias = int(i);
      if (b.bias < 0) internal_error("attention bias '" + op.bias + "' has no PositionBias op");
    }
    if (op.kind == OpKind::Attention && buffers_[size_t(b.out)].dtype != compute_)
      internal_error("attention output '" + op.output + "' is not in the compute dtype");
    bound.push_back(std::move(b));
  }
  // (Indices are into `bound`, which lacks the plan's PositionBias ops.)
  std::vector<const Op*> bound_ops;
  for (const BoundOp& b : bound) bound_ops.push_back(b.op);
  auto read_later = [&](size_t from, const std::string& name) {
    return read_later_in(bound_ops, from, name);
  };
  for (size_t i = 0; i + 1 < bound.size(); ++i) {
    const Op& first = *bound[i].op;
    const bool take = first.kind == OpKind::TakeOutputs;
    if ((!take && first.kind != OpKind::Norm) || (take && i + 2 >= bound.size())) continue;
    const Op& norm = take ? *bound[i + 1].op : first;
    const Op& lin = take ? *bound[i + 2].op : *bound[i + 1].op;
    const size_t after = take ? i + 3 : i + 2;
    const std::string& source = first.inputs[0];
    if (norm.kind != OpKind::Norm || lin.kind != OpKind::Linear || lin.inputs[0] != norm.output ||
        (take && norm.inputs[0] != first.output) || lin.output == source || read_later(after, norm.output) ||
        (take && first.output != norm.output && read_later(after - 1, first.output)))
      continue;
    bound[i].feeds_gemv = true;
    if (take) bound[i + 1].feeds_gemv = true;
  }
  for (size_t i = 0; i < bound.size(); ++i) {
    const Op& op = *bound[i].op;
    if (op.kind != OpKind::Linear || !in_out_weights_.count(op.weights[0])) continue;
    bound[i].w_in_out = true;
    if (i >= 1 && bound[i - 1].op->kind == OpKind::Attention) {  // plan_attention_projections
      bound[i - 1].projected = true;
      continue;
    }
    // plan_ffn_blocks picked it as the down projection of norm, up, down (no PositionBias op in between)
    if (i < 2 || bound[i - 2].op->kind != OpKind::Norm) internal_error("ffn block lost its norm");
    bound[i - 2].feeds_ffn = true;
  }
  return bound;
}

void CudaSession::check_tokens(const TokenRows& rows, const char* what, bool decoder) const {
  std::function<int64_t(size_t)> cached;
  if (decoder) cached = [this](size_t b) { return b < rows_.size() ? rows_[b].length : int64_t{0}; };
  check_token_rows(rows, what, vocab_, cached, plan_.max_positions, max_length_);
}

void CudaSession::begin(const TokenRows& rows, const TokenRows& decoder_prefix, Want want,
                        const Outputs& outputs, bool all_positions) {
  settle_ahead();
  if (rows.empty()) fail("start: no rows given");
  if (int64_t(rows.size()) > max_batch_)
    fail("start: " + std::to_string(rows.size()) + " rows exceed the session's --max-batch of " +
         std::to_string(max_batch_));
  rows_.clear();
  auto fresh_rows = [&] {
    rows_.assign(rows.size(), RowState{});
    for (size_t b = 0; b < rows.size(); ++b) rows_[b].phys = int64_t(b);
  };
  if (!is_encoder_decoder()) {
    if (!decoder_prefix.empty())
      fail("start: a decoder prefix is only meaningful for encoder-decoder models");
    check_tokens(rows, "prompt", true);
    fresh_rows();
    forward(decoder_, rows, false, all_positions, want, outputs);
    return;
  }
  TokenRows prefix = decoder_prefix;
  if (prefix.empty()) prefix.assign(rows.size(), {model_.decoder_start_token_id()});
  if (prefix.size() != rows.size())
    fail("start: " + std::to_string(prefix.size()) + " decoder prefixes for " + std::to_string(rows.size()) +
         " encoder inputs");
  check_tokens(rows, "encoder input", false);
  check_tokens(prefix, "decoder prefix", true);
  fresh_rows();
  forward(encoder_, rows, true, false, Want::Nothing, Outputs{});
  forward(decoder_, prefix, false, all_positions, want, outputs);
}

std::vector<float> CudaSession::start(const TokenRows& rows, const TokenRows& decoder_prefix,
                                      bool all_positions) {
  std::vector<float> logits;
  begin(rows, decoder_prefix, Want::Logits, {.logits = &logits}, all_positions);
  return logits;
}

std::vector<int64_t> CudaSession::greedy_start(const TokenRows& rows, const TokenRows& decoder_prefix) {
  std::vector<int64_t> ids;
  begin(rows, decoder_prefix, Want::Ids, {.ids = &ids}, false);
  return ids;
}

std::vector<float> CudaSession::step(const TokenRows& tokens, bool all_positions) {
  check_step(tokens);
  std::vector<float> logits;
  forward(decoder_, tokens, false, all_positions, Want::Logits, {.logits = &logits});
  return logits;
}

std::vector<int64_t> CudaSession::greedy_step(const std::vector<int64_t>& next_tokens) {
  const TokenRows tokens = one_token_rows(next_tokens);
  check_step(tokens);
  std::vector<int64_t> ids;
  forward(decoder_, tokens, false, false, Want::Ids, {.ids = &ids});
  return ids;
}

bool CudaSession::runs_ahead(const TokenChoice& choice) const {
  static const bool off = env_flag("KESTREL_NO_RUN_AHEAD");  // comparisons: every step waits for the host
  return !off && chooses_tokens(choice) && want_for(choice, int64_t(rows_.size())) == Want::Ids;
}

// The step feeding `tokens` is either already running (the last call ran it ahead with the ids it returned)
// or enqueued now. Then, with run_ahead and room in every row, the step after it is enqueued too, fed on the
// device with this one's argmax (cuda::advance_greedy, captured at the front of its graph), before the host
// waits for this one's ids: so the GPU never waits for the host between two greedy steps. Each step's argmax
// keys are copied into their own pinned slot, behind which an event is recorded.
std::vector<int64_t> CudaSession::greedy_ahead(const TokenRows& tokens, bool run_ahead) {
  cudaStream_t s = impl_->stream;
  const int64_t B = int64_t(rows_.size());
  auto copy_keys = [&](int slot) {
    check(cudaMemcpyAsync(impl_->ahead_keys_host + slot * max_batch_, impl_->argmax_keys, size_t(B) * 8,
                          cudaMemcpyDeviceToHost, s),
          "reading token ids");
    check(cudaEventRecord(impl_->ahead_done[slot], s), "cudaEventRecord");
  };
  if (!(ahead_.running && tokens == ahead_.fed)) {
    settle_ahead();
    check_step(tokens);
    enqueue_forward(decoder_, tokens, false, false, Want::Ids);
    copy_keys(ahead_.slot);
  }
  const int slot = ahead_.slot;
  bool next = run_ahead;
  for (const RowState& row : rows_) next = next && row.length + 2 <= max_positions();
  if (next) {
    // Only its shape comes from the host: the device feeds the ids and advances the positions. (Its metadata
    // goes to a scratch copy: the pinned block may still be on its way to the device.)
    impl_->meta_scratch.resize(size_t(impl_->meta.total));
    Pass pass = plan_pass(TokenRows(size_t(B), std::vector<int64_t>{0}), false, false, Want::Ids, 1,
                          impl_->meta_scratch.data());
    enqueue_pass(decoder_, pass, Want::Ids, true);
    copy_keys(slot ^ 1);
  }
  last_out_rows_ = B;
  ahead_.running = next;
  const cudaError_t waited = cudaEventSynchronize(impl_->ahead_done[slot]);
  if (waited != cudaSuccess) {
    ahead_.running = false;
    check(waited, "decoder forward");
  }
  check_block_fault();
  std::vector<int64_t> ids(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    ids[size_t(b)] = cuda::argmax_index(impl_->ahead_keys_host[slot * max_batch_ + b]);
    rows_[size_t(b)].length += 1;
  }
  ahead_.fed = one_token_rows(ids);
  ahead_.slot = slot ^ 1;
  return ids;
}

void CudaSession::check_block_fault() const {
  if (*static_cast<volatile unsigned*>(impl_->fault_host))
    fail(
        "the blocks of a decode kernel did not all run at once on this GPU (is it shared, e.g. through MPS "
        "with an active-thread percentage below 100?), so this step's results are wrong and the session "
        "stops. Run on a whole GPU or MIG instance, or set KESTREL_FFN_KERNEL=0 (two GEMVs a feed-forward "
        "block instead of the kernel whose blocks wait for each other) and leave KESTREL_ATTN_QKV unset");
}

void CudaSession::settle_ahead() {
  if (!ahead_.running) return;
  ahead_.running = false;
  last_out_rows_ = 0;  // the logits on the device are the dropped step's
  check(cudaStreamSynchronize(impl_->stream), "decoder forward");
}

bool CudaSession::chooses_tokens(const TokenChoice& choice) const {
  // KESTREL_CHOOSE_ON_HOST=1 sends logits to the host instead (comparisons, debugging).
  static const bool on_host = env_flag("KESTREL_CHOOSE_ON_HOST");
  if (on_host) return false;
  // Top-p sorts its candidates in shared memory: it needs a top-k that leaves few enough of them.
  const bool top_p_fits = choice.top_p >= 1.0 || (choice.top_k > 0 && choice.top_k <= cuda::kMaxSorted / 2);
  // Beam candidates are ranked, not sampled.
  const bool candidates_fit =
      choice.candidates <= kMaxCandidates && !(choice.candidates > 0 && choice.sample);
  return top_p_fits && candidates_fit && int64_t(choice.eos_token_ids.size()) <= kMaxChoiceEos;
}

CudaSession::Want CudaSession::want_for(const TokenChoice& choice, int64_t batch) {
  bool plain = !choice.sample && choice.candidates == 0 && choice.repetition_penalty == 1.0f &&
               int64_t(choice.rows.size()) == batch;
  for (size_t r = 0; r < choice.rows.size() && plain; ++r)
    plain = !choice.rows[r].suppress_eos && choice.rows[r].logits_row == int64_t(r);
  return plain ? Want::Ids : Want::Choose;
}

void CudaSession::check_step(const TokenRows& tokens) const {
  if (rows_.empty()) fail("step: call start() first");
  if (tokens.size() != rows_.size())
    fail("step: " + std::to_string(tokens.size()) + " rows of tokens for a batch of " +
         std::to_string(rows_.size()));
  check_tokens(tokens, "step", true);
}

ChosenTokens CudaSession::start_and_choose(const TokenRows& rows, const TokenRows& decoder_prefix,
                                           const TokenChoice& choice) {
  ChosenTokens out;
  begin(rows, decoder_prefix, want_for(choice, int64_t(rows.size())),
        {.ids = &out.tokens, .choice = &choice, .scores = &out.scores}, false);
  return out;
}

ChosenTokens CudaSession::step_and_choose(const TokenRows& tokens, const TokenChoice& choice) {
  check_step(tokens);
  ChosenTokens out;
  forward(decoder_, tokens, false, false, want_for(choice, int64_t(tokens.size())),
          {.ids = &out.tokens, .choice = &choice, .scores = &out.scores});
  return out;
}

std::vector<float> CudaSession::last_logits(int64_t row) const {
  if (ahead_.running) internal_error("last_logits: a greedy step runs ahead");
  check_row_index(row, last_out_rows_, "last_logits: row");
  const Buffer& out = buffers_[size_t(decoder_.back().out)];
  std::vector<float> logits(size_t(out.width));
  check(cudaMemcpy(logits.data(), static_cast<const float*>(out.data) + row * out.width, logits.size() * 4,
                   cudaMemcpyDeviceToHost),
        "reading logits");
  return logits;
}

size_t CudaSession::choice_rows_bytes() const {
  return align_up(size_t(max_batch_) * sizeof(cuda::ChooseRow));
}

size_t CudaSession::choice_block_bytes() const {
  return choice_rows_bytes() + size_t(max_batch_ * max_length_ + kMaxChoiceEos) * 4;
}

void CudaSession::enqueue_choice(const TokenChoice& choice, int64_t out_rows) {
  const int64_t R = int64_t(choice.rows.size());
  if (choice.candidates > kMaxCandidates)
    internal_error("choosing tokens: more candidates than kMaxCandidates");
  if (R == 0 || R > max_batch_)
    fail("choosing tokens for " + std::to_string(R) + " rows; the session holds at most --max-batch " +
         std::to_string(max_batch_));
  // Host staging, in the device block's layout: rows, then the histories one after another, then eos ids.
  auto* rows = reinterpret_cast<cuda::ChooseRow*>(impl_->choice_host);
  auto* history = reinterpret_cast<int32_t*>(impl_->choice_host + choice_rows_bytes());
  int64_t used = 0;
  for (int64_t r = 0; r < R; ++r) {
    const TokenChoice::Row& in = choice.rows[size_t(r)];
    check_row_index(in.logits_row, out_rows, "choosing tokens: logits row");
    const int64_t n = choice.repetition_penalty != 1.0f ? int64_t(in.history.size()) : 0;
    if (n > max_length_) internal_error("choosing tokens: a history longer than --max-length");
    rows[r] = {int32_t(in.logits_row),  int32_t(used), int32_t(n),
               in.suppress_eos ? 1 : 0, in.uniform,    in.add};
    for (int64_t i = 0; i < n; ++i) history[used + i] = int32_t(in.history[size_t(i)]);
    used += n;
  }
  for (size_t e = 0; e < choice.eos_token_ids.size(); ++e)
    history[used + int64_t(e)] = int32_t(choice.eos_token_ids[e]);
  cudaStream_t s = impl_->stream;
  const size_t bytes = choice_rows_bytes() + size_t(used + int64_t(choice.eos_token_ids.size())) * 4;
  check(cudaMemcpyAsync(impl_->choice_dev, impl_->choice_host, bytes, cudaMemcpyHostToDevice, s),
        "uploading the token choice");

  cuda::ChooseArgs a;
  a.logits = static_cast<const float*>(buffers_[size_t(decoder_.back().out)].data);
  a.V = vocab_;
  a.R = R;
  a.rows = reinterpret_cast<const cuda::ChooseRow*>(impl_->choice_dev);
  a.history = reinterpret_cast<const int32_t*>(impl_->choice_dev + choice_rows_bytes());
  a.eos = a.history + used;
  a.n_eos = int(choice.eos_token_ids.size());
  a.sample = choice.sample;
  a.repetition_penalty = choice.repetition_penalty;
  a.temperature = choice.temperature;
  // As apply_top_k: k is at least min_tokens_to_keep; at or above the vocabulary it removes nothing.
  a.top_k = choice.top_k != 0
                ? int(std::min<int64_t>(std::max(choice.top_k, choice.min_tokens_to_keep), vocab_))
                : 0;
  a.top_p = choice.top_p < 1.0;
  a.top_p_threshold = float(1.0 - choice.top_p);
  a.min_keep = int(choice.min_tokens_to_keep);
  a.candidates = int(choice.candidates);
  a.scores = impl_->candidate_scores;
  a.work = impl_->choice_work;
  a.ids = impl_->choice_ids;
  cuda::choose_tokens(a, s);
}

void CudaSession::reorder(const std::vector<int64_t>& src_rows) {
  settle_ahead();
  check_reorder(src_rows, int64_t(rows_.size()), max_batch_);
  // The first new row taking an old row keeps its physical cache row; later copies get a free one. Sources
  // stay claimed, so no copy overwrites a row another copy still reads.
  std::vector<RowState> next;
  std::vector<bool> claimed(size_t(max_batch_), false);
  std::vector<size_t> copies;
  for (size_t i = 0; i < src_rows.size(); ++i) {
    next.push_back(rows_[size_t(src_rows[i])]);
    if (!claimed[size_t(next[i].phys)])
      claimed[size_t(next[i].phys)] = true;
    else
      copies.push_back(i);
  }
  const size_t T = dtype_size(compute_);
  const size_t row_bytes = size_t(max_length_ * plan_.kv_width) * T;
  int64_t free_row = 0;
  for (size_t i : copies) {
    while (claimed[size_t(free_row)]) ++free_row;
    claimed[size_t(free_row)] = true;
    const int64_t from = next[i].phys;
    auto copy = [&](const std::vector<void*>& caches, int64_t tokens) {
      const size_t n = size_t(tokens * plan_.kv_width) * T;
      for (void* c : caches)
        check(cudaMemcpyAsync(static_cast<char*>(c) + size_t(free_row) * row_bytes,
                              static_cast<char*>(c) + size_t(from) * row_bytes, n, cudaMemcpyDeviceToDevice,
                              impl_->stream),
              "reorder: copying a KV-cache row");
    };
    copy(self_k_, next[i].length);
    copy(self_v_, next[i].length);
    copy(cross_k_, next[i].encoder_length);
    copy(cross_v_, next[i].encoder_length);
    next[i].phys = free_row;
  }
  rows_ = std::move(next);
}

CUstream_st* CudaSession::stream() const {
  return impl_->stream;
}

int64_t CudaSession::decoder_length(int64_t b) const {
  check_row_index(b, int64_t(rows_.size()), "decoder_length: row");
  return rows_[size_t(b)].length;
}

int CudaSession::choose_splits(int64_t T, int64_t heads, int64_t max_keys) const {
  // Up to two blocks per SM, each split keeping at least 16 keys (a decode step's attention is latency: many
  // short blocks finish sooner than a few long ones); only decode-sized forwards have room for the partials.
  if (T > max_batch_) return 1;
  int splits = 1;
  while (splits * 2 <= kMaxSplits && T * heads * splits * 2 <= 2 * int64_t(sm_count_) &&
         max_keys / (splits * 2) >= 16)
    splits *= 2;
  return splits;
}

CudaSession::Pass CudaSession::plan_pass(const TokenRows& tokens, bool encoder, bool all_positions, Want want,
                                         int64_t ahead, int32_t* m) {
  const MetaLayout& L = impl_->meta;
  const int64_t B = int64_t(tokens.size());
  int64_t T = 0;
  for (const auto& r : tokens) T += int64_t(r.size());
  if (T > max_tokens_) internal_error("forward of " + std::to_string(T) + " tokens exceeds the plan");
  const int64_t out_rows = all_positions ? T : B;
  if (!encoder && out_rows > max_out_rows_)
    fail("scoring " + std::to_string(out_rows) + " positions at once exceeds the CUDA session's limit of " +
         std::to_string(max_out_rows_) + " rows of logits per call; score fewer or shorter rows per call");
  int64_t t = 0, max_self = 0, max_cross = 0;
  bool one_token_each = !encoder && !all_positions;
  for (int64_t b = 0; b < B; ++b) {
    const RowState& row = rows_[size_t(b)];
    const int64_t n = int64_t(tokens[size_t(b)].size());
    const int64_t past = encoder ? 0 : row.length + ahead;
    one_token_each = one_token_each && n == 1;
    m[L.local_base + b] = int32_t(t);
    m[L.local_count + b] = int32_t(n);
    m[L.phys + b] = int32_t(row.phys);
    m[L.self_base + b] = int32_t(row.phys * max_length_);
    m[L.self_count + b] = int32_t(past + n);
    m[L.cross_base + b] = int32_t(row.phys * max_length_);
    m[L.cross_count + b] = int32_t(row.encoder_length);
    max_self = std::max(max_self, past + n);
    max_cross = std::max(max_cross, row.encoder_length);
    for (int64_t i = 0; i < n; ++i, ++t) {
      m[L.ids + t] = int32_t(tokens[size_t(b)][size_t(i)]);
      m[L.tok_row + t] = int32_t(b);
      m[L.tok_pos + t] = int32_t(past + i);
      if (all_positions) m[L.take_src + t] = int32_t(t);
    }
    if (!all_positions) m[L.take_src + b] = int32_t(t - 1);
  }
  Pass pass;
  pass.T = T;
  pass.out_rows = out_rows;
  pass.splits_self = encoder ? 1 : choose_splits(T, heads_, max_self);
  pass.splits_cross = encoder ? 1 : choose_splits(T, heads_, max_cross);
  pass.decode = one_token_each;
  // Attention with its output projection fused in attends over all keys in every column slice's block: only
  // for contexts short enough that those repeated reads (from L2) cost less than a second kernel.
  pass.project_self = one_token_each && T <= project_max_rows() && max_self <= project_max_keys();
  pass.project_cross = one_token_each && T <= project_max_rows() && max_cross <= project_max_keys();
  pass.rows = B;
  for (const auto& r : tokens) pass.max_row_tokens = std::max(pass.max_row_tokens, int64_t(r.size()));
  if (want == Want::Ids && !encoder) pass.argmax = impl_->argmax_keys;
  return pass;
}

void CudaSession::enqueue_pass(const std::vector<BoundOp>& program, Pass& pass, Want want, bool advance) {
  cudaStream_t s = impl_->stream;
  const MetaLayout& L = impl_->meta;
  const int64_t B = pass.rows, T = pass.T, out_rows = pass.out_rows;
  const Buffer& out = buffers_[size_t(decoder_.back().out)];
  auto argmax = [&] {  // unless the LM head's GEMV did it (fused_linear)
    if (!pass.argmax_fused)
      cuda::argmax_rows(static_cast<const float*>(out.data), out_rows, out.width, impl_->argmax_keys, s);
  };
  if (advance && !(pass.decode && want == Want::Ids)) internal_error("a step run ahead that is not greedy");
  if (pass.decode) {
    // A step of one row runs as one persistent kernel when every op of the plan fits in it (it chooses its
    // own attention splits, so one graph serves every length).
    const bool one_kernel = B == 1 && T == 1 && prepare_step_kernel(program, pass);
    const auto key = std::make_tuple(B, one_kernel ? 0 : pass.splits_self, one_kernel ? 0 : pass.splits_cross,
                                     want == Want::Ids, pass.project_self, pass.project_cross, advance);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      try {
        if (advance)
          cuda::advance_greedy(impl_->argmax_keys, B, impl_->meta_dev + L.ids, impl_->meta_dev + L.tok_pos,
                               impl_->meta_dev + L.self_count, s);
        if (one_kernel)
          cuda::run_step_program(impl_->step_program, impl_->step_ops, s);
        else
          run_program(program, pass);
        if (want == Want::Ids) argmax();
      } catch (...) {
        cudaStreamEndCapture(s, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check(e, "cudaGraphInstantiate");
      it = graphs_.emplace(key, exec).first;
    }
    for (int n = 0; n < (advance ? 1 : graph_replays()); ++n)
      check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(it->second), s), "cudaGraphLaunch");
  } else {
    run_program(program, pass);
    if (want == Want::Ids) argmax();
  }
}

CudaSession::Pass CudaSession::enqueue_forward(const std::vector<BoundOp>& program, const TokenRows& tokens,
                                               bool encoder, bool all_positions, Want want) {
  Pass pass = plan_pass(tokens, encoder, all_positions, want, 0, impl_->meta_host);
  check(cudaMemcpyAsync(impl_->meta_dev, impl_->meta_host, size_t(impl_->meta.total) * 4,
                        cudaMemcpyHostToDevice, impl_->stream),
        "uploading tokens");
  enqueue_pass(program, pass, want, false);
  return pass;
}

void CudaSession::forward(const std::vector<BoundOp>& program, const TokenRows& tokens, bool encoder,
                          bool all_positions, Want want, const Outputs& outputs) {
  settle_ahead();
  const Pass pass = enqueue_forward(program, tokens, encoder, all_positions, want);
  const int64_t B = int64_t(tokens.size()), out_rows = pass.out_rows;
  const Buffer& out = buffers_[size_t(decoder_.back().out)];
  cudaStream_t s = impl_->stream;
  if (!encoder) last_out_rows_ = out_rows;
  if (want == Want::Choose) enqueue_choice(*outputs.choice, out_rows);

  // Ids: one argmax key a row; Choose: one id a choice row, or `candidates` of them with their scores.
  const bool chose = want == Want::Choose;
  const int64_t per_row = chose ? std::max<int64_t>(1, outputs.choice->candidates) : 1;
  const int64_t ids_count = chose ? int64_t(outputs.choice->rows.size()) * per_row : out_rows;
  if (chose)
    check(cudaMemcpyAsync(impl_->choice_ids_host, impl_->choice_ids, size_t(ids_count) * 4,
                          cudaMemcpyDeviceToHost, s),
          "reading token ids");
  if (want == Want::Ids)
    check(cudaMemcpyAsync(impl_->argmax_keys_host, impl_->argmax_keys, size_t(ids_count) * 8,
                          cudaMemcpyDeviceToHost, s),
          "reading token ids");
  if (chose && outputs.choice->candidates > 0)
    check(cudaMemcpyAsync(impl_->candidate_scores_host, impl_->candidate_scores, size_t(ids_count) * 4,
                          cudaMemcpyDeviceToHost, s),
          "reading candidate scores");
  check(cudaStreamSynchronize(s), encoder ? "encoder forward" : "decoder forward");
  check_block_fault();
  if (want == Want::Logits) {
    outputs.logits->resize(size_t(out_rows * out.width));
    check(cudaMemcpy(outputs.logits->data(), out.data, outputs.logits->size() * 4, cudaMemcpyDeviceToHost),
          "reading logits");
  } else if (want == Want::Ids) {
    outputs.ids->resize(size_t(ids_count));
    for (int64_t r = 0; r < ids_count; ++r)
      (*outputs.ids)[size_t(r)] = cuda::argmax_index(impl_->argmax_keys_host[r]);
  } else if (chose) {
    outputs.ids->assign(impl_->choice_ids_host, impl_->choice_ids_host + ids_count);
    if (outputs.choice->candidates > 0)
      outputs.scores->assign(impl_->candidate_scores_host, impl_->candidate_scores_host + ids_count);
  }

  for (int64_t b = 0; b < B; ++b) {
    if (encoder)
      rows_[size_t(b)].encoder_length = int64_t(tokens[size_t(b)].size());
    else
      rows_[size_t(b)].length += int64_t(tokens[size_t(b)].size());
  }
}

bool CudaSession::prepare_step_kernel(const std::vector<BoundOp>& program, Pass& pass) {
  if (impl_->step_state != 0) return impl_->step_state > 0;
  impl_->step_state = -1;
  // Opt-in (KESTREL_STEP_KERNEL=1) until it beats the op-by-op graph: on an H100 it does not yet
  // (kernels/cuda/NOTES.md). When on, a plan it cannot run is an error rather than a silent fallback.
  if (!step_kernel_requested()) return false;
  auto unsupported = [&](const Op& op) -> bool {
    fail("KESTREL_STEP_KERNEL=1: the decode step kernel cannot run op " + op_kind_name(op.kind) + " -> '" +
         op.output + "'");
  };
  std::vector<cuda::StepOp> ops;
  for (size_t i = 0; i < program.size();) {
    const BoundOp& b = program[i];
    cuda::StepOp s;
    size_t used = fused_linear(program, i, pass, &s.linear);
    if (used > 0) {
      s.kind = cuda::StepKind::Linear;
      s.linear.in.rows = nullptr;  // one token: the gathered row is row 0
    } else if (b.op->kind == OpKind::Embed) {
      Buffer& out = buffer(b.out);
      out.rows = pass.T;
      s.kind = cuda::StepKind::Embed;
      s.embed = {impl_->dev(impl_->meta.ids),
                 impl_->dev(impl_->meta.tok_pos),
                 b.w[0],
                 plan_.embed_positions && b.w.size() > 1 ? b.w[1] : nullptr,
                 b.wt,
                 out.width,
                 static_cast<float*>(out.data)};
      used = 1;
    } else if (b.op->kind == OpKind::Linear) {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (!b.op->residual) out.rows = in.rows;
      s.kind = cuda::StepKind::Linear;
      s.linear.in = cuda::LinearInput{in.data, in.dtype};
      linear_call(b, in.width, out, s.linear);
      used = 1;
    } else if (b.op->kind == OpKind::Attention) {
      s.kind = cuda::StepKind::Attention;
      s.attention = attention_args(b, pass);
      if (b.op->kv == KVSource::Self && !s.attention.fresh) return unsupported(*b.op);  // separate KV store
      used = 1;
    } else {
      return unsupported(*b.op);  // an unfused norm or gather, a cross-attention store
    }
    if (!cuda::step_kernel_supports(s)) return unsupported(*program[i + used - 1].op);
    ops.push_back(s);
    i += used;
  }
  if (cuda::step_program_bytes(ops.size()) > impl_->step_program_bytes)
    internal_error("the decode step program outgrew its planned memory");
  cuda::upload_step_program(ops, impl_->step_program, impl_->stream);
  impl_->step_ops = ops.size();
  impl_->step_state = 1;
  return true;
}

void CudaSession::run_program(const std::vector<BoundOp>& program, Pass& pass) {
  impl_->pending_qkv.reset();
  for (size_t i = 0; i < program.size();) {
    size_t fused = fused_ffn(program, i);
    if (fused == 0) fused = fused_attention(program, i, pass);
    if (fused == 0) fused = fused_linear(program, i, pass);
    if (fused > 0) {
      i += fused;
    } else {
      run_op(program[i], pass);
      ++i;
    }
  }
  if (impl_->pending_qkv) internal_error("a fused QKV GEMV was left unrun");
}

bool CudaSession::feeds_projected_attention(const std::vector<BoundOp>& program, size_t at,
                                            const BoundOp& lin, const Pass& pass) const {
  // Opt-in (KESTREL_ATTN_QKV=1) until it beats the GEMV as its own kernel: on an H100 it is slower
  // (kernels/cuda/NOTES.md, "Sixth session").
  static const bool on = env_switch("KESTREL_ATTN_QKV") == EnvSwitch::On;
  if (!on || at >= program.size() || pass.T != 1) return false;
  const BoundOp& att = program[at];
  return att.op->kind == OpKind::Attention && att.projected &&
         (att.op->kv == KVSource::Cross ? pass.project_cross : pass.project_self) &&
         att.op->inputs[0] == lin.op->output;
}

void CudaSession::flush_pending_qkv() {
  if (!impl_->pending_qkv) return;
  const cuda::StepLinear& L = *impl_->pending_qkv;
  cuda::gemv(L.in, 1, L.K, L.W, L.wt, L.N, L.bias, L.act, L.gated, L.residual, L.y, L.yt, impl_->stream);
  impl_->pending_qkv.reset();
}

cuda::BlockWait CudaSession::block_wait() const {
  cuda::BlockWait w;
  w.fault = impl_->fault_dev;
  static const int64_t ms = env_int("KESTREL_BLOCK_WAIT_MS");  // the bounded wait's test sets it low
  if (ms > 0) w.wait_ns = uint64_t(ms) * 1'000'000u;
  return w;
}

size_t CudaSession::fused_linear(const std::vector<BoundOp>& program, size_t i, Pass& pass,
                                 cuda::StepLinear* call) {
  if (!program[i].feeds_gemv) return 0;
  const bool take = program[i].op->kind == OpKind::TakeOutputs;
  const size_t n = take ? 3 : 2;
  const BoundOp& norm = program[i + n - 2];
  const BoundOp& lin = program[i + n - 1];
  Buffer& src = buffer(program[i].in);
  const int64_t M = take ? pass.out_rows : src.rows;
  const int64_t K = src.width;
  if (M > cuda::kGemvMaxRows || !cuda::gemv_stages_input(M, K, lin.wt)) return 0;
  const Op& lop = *lin.op;
  if (take) buffer(program[i].out).rows = M;
  buffer(norm.out).rows = M;
  Buffer& out = buffer(lin.out);
  if (!lop.residual)
    out.rows = M;
  else if (out.rows != M)
    internal_error("residual linear into '" + lop.output + "' with mismatched rows");
  cuda::StepLinear L;
  L.in = norm_input(norm, src);
  L.in.rows = take ? impl_->dev(impl_->meta.take_src) : nullptr;
  linear_call(lin, K, out, L);
  if (call) {
    *call = L;
    return n;
  }
  const bool feeds_attention = i + n < program.size() && program[i + n].op->kind == OpKind::Attention;
  if (lin.out != decoder_.back().out && left_out(feeds_attention ? "qkv" : "other", pass.decode)) return n;
  // A decode QKV (or query) GEMV of one row feeding a projected attention runs inside that attention kernel.
  if (M == 1 && L.wt == compute_ && L.yt == compute_ && !L.gated && !L.residual &&
      L.act == cuda::Act::Identity && L.in.xt == DType::F32 && !L.in.rows &&
      feeds_projected_attention(program, i + n, lin, pass)) {
    impl_->pending_qkv = L;
    return n;
  }
  // A greedy pass's LM head raises the argmax keys as it writes the logits: no argmax kernel after it.
  unsigned long long* argmax = nullptr;
  if (pass.argmax && lin.out == decoder_.back().out && L.yt == DType::F32 && !L.gated) {
    argmax = pass.argmax;
    pass.argmax_fused = true;
  }
  cuda::gemv(L.in, M, K, L.W, L.wt, L.N, L.bias, L.act, L.gated, L.residual, L.y, L.yt, impl_->stream,
             argmax);
  return n;
}

cuda::LinearInput CudaSession::norm_input(const BoundOp& norm, const Buffer& src) const {
  const Op& op = *norm.op;
  cuda::LinearInput in;
  in.x = src.data;
  in.xt = src.dtype;
  in.gamma = static_cast<const float*>(norm.w[0]);
  in.beta = norm.w.size() > 1 ? static_cast<const float*>(norm.w[1]) : nullptr;
  in.rms = op.norm == NormKind::RMS;
  in.eps = float(op.eps);
  in.out_scale = op.out_scale;
  return in;
}

size_t CudaSession::fused_ffn(const std::vector<BoundOp>& program, size_t i) {
  if (!program[i].feeds_ffn) return 0;
  Buffer& x = buffer(program[i].in);
  if (x.rows != 1) return 0;  // several rows: norm, cuBLASLt, cuBLASLt (linear_in_out)
  const BoundOp& norm = program[i];
  const BoundOp& up = program[i + 1];
  const BoundOp& down = program[i + 2];
  const Op& uop = *up.op;
  cuda::FfnArgs a;
  a.in = norm_input(norm, x);
  a.D = x.width;
  a.F = plan_.weight(uop.weights[0]).shape[0] / (uop.gated ? 2 : 1);
  a.W1 = up.w[0];
  a.b1 = !uop.gated && up.w.size() > 1 ? up.w[1] : nullptr;
  a.wt = up.wt;
  a.act = to_kernel_act(uop.act);
  a.gated = uop.gated;
  a.ht = buffer(up.out).dtype;
  a.W2t = down.w[0];
  a.b2 = down.w.size() > 1 ? static_cast<const float*>(down.w[1]) : nullptr;
  a.staged = impl_->staged;
  a.wait = block_wait();
  buffer(norm.out).rows = 1;
  buffer(up.out).rows = 1;
  if (!left_out("ffn", true)) cuda::ffn(a, impl_->stream);
  return 3;
}

size_t CudaSession::fused_attention(const std::vector<BoundOp>& program, size_t i, const Pass& pass) {
  auto unfused = [&] {
    flush_pending_qkv();
    return size_t(0);
  };
  if (!program[i].projected) return unfused();
  const BoundOp& att = program[i];
  if (!(att.op->kv == KVSource::Cross ? pass.project_cross : pass.project_self)) return unfused();
  const BoundOp& lin = program[i + 1];
  Buffer& x = buffer(lin.out);
  if (x.rows != pass.T) internal_error("residual linear into '" + lin.op->output + "' with mismatched rows");
  cuda::AttentionArgs a = attention_args(att, pass);
  a.splits = 1;  // every block attends over all keys of its row, then projects its column slice
  // Its scores row in shared memory needs room for the keys of the steps that take this path only, not for
  // --max-length's (at 1,024 planned tokens the larger row made T5-3B's decode step 2.4 % slower).
  a.max_keys = std::min(a.max_keys, project_max_keys());
  a.proj_wt = lin.w[0];
  a.proj_bias = lin.w.size() > 1 ? static_cast<const float*>(lin.w[1]) : nullptr;
  a.proj_out = static_cast<float*>(x.data);
  a.proj_n = x.width;
  if (!cuda::attention_can_project(a)) return unfused();
  if (impl_->pending_qkv) {  // its GEMV too (fused_linear left it)
    const cuda::StepLinear& L = *impl_->pending_qkv;
    cuda::AttentionQkv& q = a.qkv;
    q.in = L.in;
    q.K = L.K;
    q.W = L.W;
    q.bias = L.bias;
    q.parts = int(L.N / (int64_t(a.heads) * a.head_dim));
    q.y = L.y;
    q.head_counters = impl_->head_counters;
    q.staged = impl_->staged;
    q.wait = block_wait();
    if (int64_t(q.parts) * a.heads * a.head_dim != L.N || L.y != a.q || a.T != 1)
      internal_error("the QKV GEMV does not match the attention it feeds");
    impl_->pending_qkv.reset();
  }
  if (!left_out("attn", pass.decode)) cuda::attention(a, impl_->stream);
  return 2;
}

void CudaSession::linear_call(const BoundOp& lin, int64_t K, const Buffer& out, cuda::StepLinear& L) const {
  const Op& op = *lin.op;
  const int64_t N = plan_.weight(op.weights[0]).shape[0];
  L.K = K;
  L.W = lin.w[0];
  L.wt = lin.wt;
  L.N = op.gated ? N / 2 : N;
  L.bias = !op.gated && lin.w.size() > 1 ? lin.w[1] : nullptr;
  L.act = to_kernel_act(op.act);
  L.gated = op.gated;
  L.residual = op.residual;
  L.y = out.data;
  L.yt = out.dtype;
}

cuda::AttentionArgs CudaSession::attention_args(const BoundOp& b, const Pass& pass) {
  const Op& op = *b.op;
  const MetaLayout& L = impl_->meta;
  Buffer& in = buffer(b.in);
  Buffer& out = buffer(b.out);
  out.rows = in.rows;
  const int64_t I = op.heads * op.head_dim;
  const size_t es = dtype_size(compute_);
  cuda::AttentionArgs a;
  a.q = in.data;
  a.q_stride = in.width;
  a.tok_row = impl_->dev(L.tok_row);
  a.tok_pos = impl_->dev(L.tok_pos);
  a.T = in.rows;
  a.heads = int(op.heads);
  a.head_dim = int(op.head_dim);
  a.scale = op.scale;
  a.causal = op.causal;
  a.out = out.data;
  a.out_stride = out.width;
  a.dtype = compute_;
  a.partials = impl_->partials;
  a.split_counters = impl_->split_counters;
  a.max_keys = max_length_;
  if (!pass.decode) {  // prompt passes: each row's queries are consecutive tokens (tensor-core attention)
    a.q_base = impl_->dev(L.local_base);
    a.q_count = impl_->dev(L.local_count);
    a.rows = int(pass.rows);
    a.max_queries = pass.max_row_tokens;
  }
  switch (op.kv) {
    case KVSource::Local:
      a.k = static_cast<char*>(in.data) + size_t(I) * es;
      a.v = static_cast<char*>(in.data) + size_t(2 * I) * es;
      a.kv_stride = in.width;
      a.key_base = impl_->dev(L.local_base);
      a.key_count = impl_->dev(L.local_count);
      break;
    case KVSource::Self:
      a.k = self_k_[size_t(op.slot)];
      a.v = self_v_[size_t(op.slot)];
      a.kv_stride = I;
      a.key_base = impl_->dev(L.self_base);
      a.key_count = impl_->dev(L.self_count);
      a.splits = pass.splits_self;
      if (pass.decode) {  // the new token's key and value go into the cache inside attention
        a.fresh = in.data;
        a.fresh_stride = in.width;
        a.fresh_k_offset = I;
        a.fresh_v_offset = 2 * I;
        if (!cuda::attention_can_fuse_store(a)) a.fresh = nullptr;
        a.cache_ready = a.fresh != nullptr;
      }
      break;
    case KVSource::Cross:
      a.k = cross_k_[size_t(op.slot)];
      a.v = cross_v_[size_t(op.slot)];
      a.kv_stride = I;
      a.key_base = impl_->dev(L.cross_base);
      a.key_count = impl_->dev(L.cross_count);
      a.splits = pass.splits_cross;
      a.cache_ready = pass.decode;  // filled by the encoder forward
      break;
  }
  if (b.bias >= 0) {
    const PositionBias& pb = position_biases_[size_t(b.bias)];
    a.bias_table = pb.table;
    a.bucket = pb.bucket;
    a.bucket_center = max_length_;
  }
  return a;
}

void CudaSession::run_op(const BoundOp& b, const Pass& pass) {
  const int64_t T = pass.T, out_rows = pass.out_rows;
  const Op& op = *b.op;
  const MetaLayout& L = impl_->meta;
  cudaStream_t s = impl_->stream;
  switch (op.kind) {
    case OpKind::Embed: {
      Buffer& out = buffer(b.out);
      out.rows = T;
      const void* pos = plan_.embed_positions && b.w.size() > 1 ? b.w[1] : nullptr;
      cuda::embedding(impl_->dev(L.ids), impl_->dev(L.tok_pos), T, b.w[0], pos, b.wt, out.width,
                      static_cast<float*>(out.data), s);
      return;
    }
    case OpKind::PositionBias:
      return;
    case OpKind::Norm: {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (b.in == b.out && in.dtype != out.dtype) internal_error("in-place norm across dtypes");
      out.rows = in.rows;
      const float* beta = b.w.size() > 1 ? static_cast<const float*>(b.w[1]) : nullptr;
      cuda::norm(in.data, in.dtype, in.rows, in.width, static_cast<const float*>(b.w[0]), beta,
                 op.norm == NormKind::RMS, float(op.eps), op.out_scale, out.data, out.dtype, s);
      return;
    }
    case OpKind::Linear: {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (!op.residual)
        out.rows = in.rows;
      else if (out.rows != in.rows)
        internal_error("residual linear into '" + op.output + "' with mismatched rows");
      const int64_t N = plan_.weight(op.weights[0]).shape[0];
      if (!b.w_in_out && in.dtype != b.wt && in.rows <= cuda::kGemvMaxRows &&
          cuda::gemv_stages_input(in.rows, in.width, b.wt)) {  // the GEMV converts while staging its input
        cuda::StepLinear L;
        L.in = cuda::LinearInput{in.data, in.dtype};
        linear_call(b, in.width, out, L);
        cuda::gemv(L.in, in.rows, L.K, L.W, L.wt, L.N, L.bias, L.act, L.gated, L.residual, L.y, L.yt, s);
        return;
      }
      const void* x = in.data;
      if (in.dtype != b.wt) {  // e.g. the fp32 final hidden state feeding a 16-bit LM head
        cuda::convert(in.data, in.dtype, impl_->convert_scratch, b.wt, in.rows * in.width, s);
        x = impl_->convert_scratch;
      }
      const void* bias = b.w.size() > 1 ? b.w[1] : nullptr;
      if (op.gated)
        cuda::gated_linear(*impl_->gemm, x, in.rows, in.width, b.w[0], b.wt, N / 2, to_kernel_act(op.act),
                           op.residual, out.data, out.dtype, impl_->gate_scratch, s);
      else if (b.w_in_out)  // a feed-forward block's down projection over several rows (fused_ffn takes one)
        cuda::linear_in_out(*impl_->gemm, x, in.rows, in.width, b.w[0], b.wt, N, bias, to_kernel_act(op.act),
                            op.residual, out.data, out.dtype, s);
      else
        cuda::linear(*impl_->gemm, x, in.rows, in.width, b.w[0], b.wt, N, bias, to_kernel_act(op.act),
                     op.residual, out.data, out.dtype, s);
      return;
    }
    case OpKind::Attention: {
      const cuda::AttentionArgs a = attention_args(b, pass);
      if (op.kv == KVSource::Self && !a.fresh)
        cuda::store_kv(a.q, a.q_stride, op.heads * op.head_dim, 2 * op.heads * op.head_dim,
                       op.heads * op.head_dim, a.T, impl_->dev(L.tok_row), impl_->dev(L.tok_pos),
                       impl_->dev(L.phys), max_length_, compute_, a.k, a.v, s);
      cuda::attention(a, s);
      return;
    }
    case OpKind::StoreKV: {
      Buffer& in = buffer(b.in);
      const int64_t I = plan_.kv_width;
      cuda::store_kv(in.data, in.width, 0, I, I, in.rows, impl_->dev(L.tok_row), impl_->dev(L.tok_pos),
                     impl_->dev(L.phys), max_length_, compute_, cross_k_[size_t(op.slot)],
                     cross_v_[size_t(op.slot)], s);
      return;
    }
    case OpKind::TakeOutputs: {
      Buffer& in = buffer(b.in);
      Buffer& out = buffer(b.out);
      if (in.dtype != out.dtype) internal_error("take_outputs across dtypes");
      out.rows = out_rows;
      cuda::gather_rows(in.data, impl_->dev(L.take_src), out_rows, in.width, in.dtype, out.data, s);
      return;
    }
  }
}

std::unique_ptr<Session> open_cuda_session(const Model& model, const SessionOptions& options,
                                           const CudaSessionOptions& cuda) {
  return std::make_unique<CudaSession>(model, options, cuda);
}

bool cuda_device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace kestrel

#endif  // KESTREL_HAVE_CUDA
