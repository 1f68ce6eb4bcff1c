// The decode step of a batch of one as a single persistent kernel: every op of the step (embedding, the
// GEMVs with their norms fused in, attention) is a phase, and a grid-wide barrier separates dependent phases
// instead of a kernel boundary. One block (kWarps streaming warps and a control warp) runs on every SM for
// the whole step. Experimental and opt-in (KESTREL_STEP_KERNEL=1): on an H100 it is still slower than the
// op-by-op graph; NOTES.md has the measurements and where its time goes.
//
// Why: a batch-1 step is a chain of ~5 small kernels a layer, and the hand-over between two dependent
// kernels costs ~6 µs on an H100 (NOTES.md), about as long as streaming a GPT-2 XL layer's projection. Inside
// one kernel the weights - which never depend on the step's activations - are streamed continuously: every
// lane keeps kDepth chunks of its own weight slices in flight in a private ring in shared memory
// (cp.async, LDGSTS), across phase boundaries, barriers and attention, so HBM never waits for a barrier.
//
// The weight stream: warp w of the grid (numbered warp-in-block major, so every block gets the same mix of
// work) owns output features w, w + S, w + 2S, ... (S = warps in the grid) of every linear op and walks
// them two rows at a time (feature pairs (n, n + S), or both halves of a gated feature) in chunks of kChunk
// 16-byte vectors per lane and row. The sequence of chunks over all linear ops of the step is one stream;
// `WeightFeed` issues it kDepth chunks ahead of `linear_phase`, which consumes it. Both walk it with the same
// `LinearWork` arithmetic. A lane only ever reads the ring slots it filled itself, so no synchronisation but
// cp.async.wait_group is needed.
//
// Activations written inside the kernel are read with ld.global.cg (L2): another SM may have rewritten a row
// this SM's L1 still holds from an earlier phase.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kWarps = 7;  // warps that stream weights and run attention (8 with the control warp: 2 an SMSP)
// Plus one control warp: it arrives at and polls the grid barriers, so the thread doing so has no weight
// copies of its own in flight. Every warp stages inputs and embeds.
constexpr int kBlockWarps = kWarps + 1;
constexpr int kThreads = kBlockWarps * 32;
constexpr int kChunk = 2;   // 16-byte vectors per lane and weight row in one chunk
constexpr int kDepth = 11;  // chunks in flight per lane
constexpr size_t kRingBytes = size_t(kDepth) * 2 * kChunk * 16 * kWarps * 32;  // 154 KiB
constexpr size_t kStageBytes = size_t(40) << 10;                               // a staged input row
constexpr int kPendingFloats = 128;  // per warp: 2 * kPendingPairs finished outputs (linear_phase)
// Per warp: the attention query and its value groups' partial sums, or the pending outputs of a linear op.
constexpr size_t kScratchFloats = 2 * kMaxHeadDim;
static_assert(kScratchFloats >= kPendingFloats);
constexpr size_t kScratchBytes = size_t(kWarps) * kScratchFloats * 4;
constexpr size_t kSmemBytes = kRingBytes + kStageBytes + kScratchBytes;
constexpr int kNormRegs = 8;  // a normalised row of up to kNormRegs * kThreads elements stays in registers
constexpr int kKeysPerPass = 32;  // attention: one key per lane
constexpr int kMaxStepSplits = 32;

// Where the barrier counters live in the uploaded program block, and where the ops start.
constexpr size_t kOpsOffset = 256;

template <typename T>
__device__ __forceinline__ T load_cg(const T* p) {
  if constexpr (sizeof(T) == 4) {
    const float v = __ldcg(reinterpret_cast<const float*>(p));
    return *reinterpret_cast<const T*>(&v);
  } else {
    const unsigned short v = __ldcg(reinterpret_cast<const unsigned short*>(p));
    return *reinterpret_cast<const T*>(&v);
  }
}

// Grid-wide barrier over a counter that grows by gridDim.x per barrier (reset at the kernel's end): the
// block's writes are ordered before the control thread's release by bar.sync, and the acquire that sees every
// block arrived orders everyone's reads after it (as CUTLASS's GenericBarrier; no full fences).
__device__ __forceinline__ void grid_barrier(unsigned* count, unsigned& target) {
  __syncthreads();
  target += gridDim.x;
  if (threadIdx.x == kWarps * 32) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
    unsigned seen = 0;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(count) : "memory");
    } while (seen < target);
  }
  __syncthreads();
}

// One warp's share of a linear op: output features f = gw, gw + step, ... (< N), each with a partner row (the
// feature S further on, or, gated, the gate's other half), every row walked in `chunks` chunks.
struct LinearWork {
  const char* W;
  int64_t row_bytes, N, S, step;
  int nvec, chunks;
  bool gated;
  __device__ LinearWork(const StepLinear& L, int64_t S_) {
    W = static_cast<const char*>(L.W);
    row_bytes = L.K * (L.wt == DType::F32 ? 4 : 2);
    nvec = int(row_bytes / 16);
    N = L.N;
    gated = L.gated;
    S = S_;
    step = gated ? S : 2 * S;
    chunks = (nvec + 32 * kChunk - 1) / (32 * kChunk);
  }
  // Row of feature f's partner, or -1.
  __device__ int64_t partner(int64_t f) const { return gated ? f + N : (f + S < N ? f + S : -1); }
};

// This lane's ring: slot s, vector v (kChunk of the first row, then kChunk of the second).
struct Ring {
  uint4* base;  // the warp's ring
  __device__ uint4* at(int slot, int v) const {
    return base + (slot * 2 * kChunk + v) * 32 + (threadIdx.x & 31);
  }
};

// Issues the step's weight chunks, in the order linear_phase consumes them, kDepth ahead. The walk's state
// (op, feature, chunk, row pointers) stays in registers.
struct WeightFeed {
  const StepOp* ops;
  int n_ops, op;
  int64_t gw, S;
  LinearWork w{StepLinear{}, 1};
  int64_t f;
  int c;
  const char *r0, *r1;
  __device__ void rows() {
    const int64_t g = w.partner(f);
    r0 = w.W + f * w.row_bytes;
    r1 = g >= 0 ? w.W + g * w.row_bytes : nullptr;
  }
  __device__ void seek(int from) {  // the next linear op with work for this warp
    for (op = from; op < n_ops; ++op)
      if (ops[op].kind == StepKind::Linear && gw < ops[op].linear.N) break;
    if (op < n_ops) {
      w = LinearWork(ops[op].linear, S);
      f = gw;
      c = 0;
      rows();
    }
  }
  __device__ void issue(const Ring& ring, int slot) {
    if (op < n_ops) {
      const int base = c * 32 * kChunk + (threadIdx.x & 31);
#pragma unroll
      for (int cc = 0; cc < kChunk; ++cc) {
        const int i = base + 32 * cc;
        if (i < w.nvec) {
          cp_async16(ring.at(slot, cc), r0 + int64_t(i) * 16);
          if (r1) cp_async16(ring.at(slot, kChunk + cc), r1 + int64_t(i) * 16);
        }
      }
      if (++c == w.chunks) {
        c = 0;
        f += w.step;
        if (f < w.N)
          rows();
        else
          seek(op + 1);
      }
    }
    cp_async_commit();  // one group per chunk, empty past the end: wait_group counts stay uniform
  }
};

// Stages the input row of a linear op in shared memory in the weight dtype TW: normalised (norm() in
// norm.cu: two-pass fp32 statistics, gamma, beta, out_scale, rounding) or converted.
template <typename TW, typename TX>
__device__ void stage_row(const LinearInput& in, int64_t K, TW* xs, float* red) {
  const TX* x = static_cast<const TX*>(in.x);
  if (!in.gamma) {
    for (int64_t k = threadIdx.x; k < K; k += kThreads) xs[k] = from_f32<TW>(to_f32(load_cg(x + k)));
    __syncthreads();
    return;
  }
  const bool in_regs = K <= int64_t(kNormRegs) * kThreads;
  float v[kNormRegs];
#pragma unroll
  for (int i = 0; i < kNormRegs; ++i) {
    const int64_t k = threadIdx.x + int64_t(i) * kThreads;
    v[i] = in_regs && k < K ? to_f32(load_cg(x + k)) : 0.0f;
  }
  float mean = 0.0f;
  if (!in.rms) {
    float s = 0.0f;
    if (in_regs) {
#pragma unroll
      for (int i = 0; i < kNormRegs; ++i) s += v[i];
    } else {
      for (int64_t k = threadIdx.x; k < K; k += kThreads) s += to_f32(load_cg(x + k));
    }
    mean = block_sum(s, red) / float(K);
  }
  float var = 0.0f;
  if (in_regs) {
#pragma unroll
    for (int i = 0; i < kNormRegs; ++i) {
      const int64_t k = threadIdx.x + int64_t(i) * kThreads;
      const float c = v[i] - mean;
      if (k < K) var += c * c;
    }
  } else {
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      const float c = to_f32(load_cg(x + k)) - mean;
      var += c * c;
    }
  }
  const float s = rsqrtf(block_sum(var, red) / float(K) + in.eps);
  auto put = [&](int64_t k, float value) {
    float o = (value - mean) * s * in.gamma[k];
    if (in.beta) o += in.beta[k];
    xs[k] = from_f32<TW>(o * in.out_scale);
  };
  if (in_regs) {
#pragma unroll
    for (int i = 0; i < kNormRegs; ++i) {
      const int64_t k = threadIdx.x + int64_t(i) * kThreads;
      if (k < K) put(k, v[i]);
    }
  } else {
    for (int64_t k = threadIdx.x; k < K; k += kThreads) put(k, to_f32(load_cg(x + k)));
  }
  __syncthreads();
}

// Finished outputs of a warp wait in shared memory (raw dot products; gated: act(gate) * up) and are written
// kPendingPairs pairs at a time by all lanes. The bias and residual of a warp's first 32 outputs are loaded
// into registers when the phase starts (`Epilogue`), so the phase's tail has no load to wait for.
constexpr int kPendingPairs = kPendingFloats / 2;

// Output e of a warp's walk (pair e / 2, first or second row): its feature, or -1 when it has none.
__device__ __forceinline__ int64_t output_feature(const LinearWork& w, int64_t f_first, int e) {
  const int64_t f = f_first + int64_t(e / 2) * w.step;
  if (f >= w.N) return -1;
  if (!(e & 1)) return f;
  return w.gated ? -1 : w.partner(f);
}

struct Epilogue {
  float bias = 0.0f, residual = 0.0f;  // of output `lane` of the first batch
};

template <typename TY>
__device__ Epilogue preload_epilogue(const StepLinear& L, const LinearWork& w, int64_t f_first) {
  Epilogue ep;
  const int64_t n = output_feature(w, f_first, threadIdx.x & 31);
  if (n >= 0) {
    if (L.bias && !w.gated) ep.bias = to_f32(static_cast<const TY*>(L.bias)[n]);
    if (L.residual) ep.residual = to_f32(load_cg(static_cast<const TY*>(L.y) + n));
  }
  return ep;
}

template <typename TY>
__device__ void flush_outputs(const StepLinear& L, const LinearWork& w, int64_t f_first, int pairs,
                              const float* pending, const Epilogue* first) {
  __syncwarp();
  for (int e = threadIdx.x & 31; e < 2 * pairs; e += 32) {
    const int64_t n = output_feature(w, f_first, e);
    if (n < 0) continue;
    const bool preloaded = first && e < 32;
    float v = pending[e];
    TY* out = static_cast<TY*>(L.y) + n;
    if (!w.gated) {
      if (L.bias) v += preloaded ? first->bias : to_f32(static_cast<const TY*>(L.bias)[n]);
      v = activate(L.act, v);
    }
    if (L.residual) v += preloaded ? first->residual : to_f32(load_cg(out));
    *out = from_f32<TY>(v);
  }
  __syncwarp();
}

// One linear op: stage the input, then consume this warp's chunks of the weight stream (refilling each ring
// slot with the chunk kDepth ahead as soon as it is read).
template <typename TW>
__device__ void linear_phase(const StepLinear& L, const Ring& ring, WeightFeed& feed, int& slot, char* stage,
                             float* red, float* pending, unsigned flags) {
  const LinearWork w(L, feed.S);
  const bool control = (threadIdx.x >> 5) >= kWarps;
  Epilogue ep;  // issued before staging, so the two round trips overlap
  if (!control)
    ep = L.yt == DType::F32 ? preload_epilogue<float>(L, w, feed.gw) : preload_epilogue<TW>(L, w, feed.gw);
  const bool staged = L.in.gamma || L.in.xt != L.wt || size_t(L.K) * sizeof(TW) <= kStageBytes;
  const TW* x = static_cast<const TW*>(L.in.x);
  if (staged) {
    TW* xs = reinterpret_cast<TW*>(stage);
    if (flags & 8)
      __syncthreads();
    else if (L.in.xt == DType::F32)
      stage_row<TW, float>(L.in, L.K, xs, red);
    else
      stage_row<TW, TW>(L.in, L.K, xs, red);
    x = xs;
  }
  if (control) return;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const int lane = threadIdx.x & 31;
  bool first_batch = true;
  auto flush = [&](int64_t f_first, int pairs) {
    if (flags & 16) return;
    const Epilogue* pre = first_batch ? &ep : nullptr;
    first_batch = false;
    if (L.yt == DType::F32)
      flush_outputs<float>(L, w, f_first, pairs, pending, pre);
    else
      flush_outputs<TW>(L, w, f_first, pairs, pending, pre);
  };
  int64_t f_first = feed.gw;
  int pairs = 0;
  for (int64_t f = feed.gw; f < w.N; f += w.step) {
    const bool has_partner = w.partner(f) >= 0;
    float acc0 = 0.0f, acc1 = 0.0f;
    for (int c = 0; c < w.chunks; ++c) {
      cp_async_wait<kDepth - 1>();
      if (!(flags & 4)) {
#pragma unroll
        for (int cc = 0; cc < kChunk; ++cc) {
          const int i = c * 32 * kChunk + lane + 32 * cc;
          if (i < w.nvec) {
            float xf[kVec<TW>], a[kVec<TW>];
            widen<TW>(staged ? xv[i] : __ldcg(xv + i), xf);
            widen<TW>(*ring.at(slot, cc), a);
#pragma unroll
            for (int e = 0; e < kVec<TW>; ++e) acc0 += a[e] * xf[e];
            if (has_partner) {
              widen<TW>(*ring.at(slot, kChunk + cc), a);
#pragma unroll
              for (int e = 0; e < kVec<TW>; ++e) acc1 += a[e] * xf[e];
            }
          }
        }
      }
      feed.issue(ring, slot);
      slot = slot + 1 == kDepth ? 0 : slot + 1;
    }
    acc0 = warp_sum(acc0);
    if (has_partner) acc1 = warp_sum(acc1);
    if (lane == 0) {
      pending[2 * pairs] = w.gated ? activate(L.act, acc0) * acc1 : acc0;
      pending[2 * pairs + 1] = acc1;
    }
    if (++pairs == kPendingPairs) {
      if (!(flags & 4)) flush(f_first, pairs);
      f_first = f + w.step;
      pairs = 0;
    }
  }
  if (pairs > 0 && !(flags & 4)) flush(f_first, pairs);
}

__device__ void embed_phase(const StepEmbed& e) {
  const int64_t id = e.ids[0], pos = e.positions[0];
  for (int64_t d = int64_t(blockIdx.x) * kThreads + threadIdx.x; d < e.D;
       d += int64_t(gridDim.x) * kThreads) {
    float v;
    float p = 0.0f;
    if (e.table_t == DType::F32) {
      v = static_cast<const float*>(e.table)[id * e.D + d];
      if (e.pos_table) p = static_cast<const float*>(e.pos_table)[pos * e.D + d];
    } else if (e.table_t == DType::F16) {
      v = to_f32(static_cast<const __half*>(e.table)[id * e.D + d]);
      if (e.pos_table) p = to_f32(static_cast<const __half*>(e.pos_table)[pos * e.D + d]);
    } else {
      v = to_f32(static_cast<const __nv_bfloat16*>(e.table)[id * e.D + d]);
      if (e.pos_table) p = to_f32(static_cast<const __nv_bfloat16*>(e.pos_table)[pos * e.D + d]);
    }
    e.y[d] = e.pos_table ? v + p : v;
  }
}

// Decode attention of the one query token: warp units (head, key split). In each pass over 32 keys every load
// is issued at once: lane j takes key j for the scores, and for the values the lanes split as (key group g,
// 16-byte column c) with kv_groups = 32 / (16-byte vectors of a head) groups, so every lane loads its keys'
// value vectors together. The new token's key and value come from the QKV output; the unit holding its
// position also stores them into the cache. With several splits the unit that finishes last merges them.
constexpr int kMaxValueLoads = 8;  // value vectors a lane keeps in flight per pass

// How the keys of a decode attention op split into warp units (head, split): `chunk` keys each.
struct AttentionUnits {
  int row, qpos, count, splits, chunk;
  __device__ AttentionUnits(const AttentionArgs& a, int64_t S) {
    row = a.tok_row[0];
    qpos = a.tok_pos[0];
    count = a.key_count[row];
    if (a.causal) count = min(count, qpos + 1);
    splits = max(1, min(kMaxStepSplits, (count + kKeysPerPass - 1) / kKeysPerPass));
    splits = max(1, min(splits, int(S / a.heads)));
    chunk = (count + splits - 1) / splits;
  }
  __device__ int64_t total(const AttentionArgs& a) const { return int64_t(a.heads) * splits; }
};

template <typename T>
__device__ void attention_phase(const AttentionArgs& a, float* scratch, int64_t gw, int64_t S) {
  constexpr int V = kVec<T>;
  const int lane = threadIdx.x & 31;
  const int D = a.head_dim, DV = D / V;
  const int groups = 32 / DV, g = lane / DV, col = lane % DV;  // value layout (g < groups lanes only)
  float* qs = scratch;                                         // [D]
  float* sums = scratch + kMaxHeadDim;                         // [groups][D]
  const AttentionUnits units(a, S);
  const int row = units.row, qpos = units.qpos, count = units.count, splits = units.splits;
  const int chunk = units.chunk;
  for (int64_t u = gw; u < units.total(a); u += S) {
    const int h = int(u / splits), sp = int(u % splits);
    const int k0 = sp * chunk, k1 = min(count, k0 + chunk);
    const T* q = static_cast<const T*>(a.q) + int64_t(h) * D;
    T* kb = static_cast<T*>(a.k) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;
    T* vb = static_cast<T*>(a.v) + int64_t(a.key_base[row]) * a.kv_stride + int64_t(h) * D;
    const T* fresh = a.fresh ? static_cast<const T*>(a.fresh) + int64_t(h) * D : nullptr;
    const int fresh_pos = fresh ? qpos : -1;
    auto key_row = [&](int j) {
      return reinterpret_cast<const uint4*>(j == fresh_pos ? fresh + a.fresh_k_offset
                                                           : kb + int64_t(j) * a.kv_stride);
    };
    auto value_row = [&](int j) {
      return reinterpret_cast<const uint4*>(j == fresh_pos ? fresh + a.fresh_v_offset
                                                           : vb + int64_t(j) * a.kv_stride);
    };
    for (int d = lane; d < D; d += 32) qs[d] = to_f32(load_cg(q + d)) * a.scale;
    __syncwarp();
    float m = -INFINITY, l = 0.0f, acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = 0.0f;
    for (int j0 = k0; j0 < k1; j0 += kKeysPerPass) {
      const int n = min(kKeysPerPass, k1 - j0);
      // Values first (they do not depend on the scores): this lane's keys j0 + g, j0 + g + groups, ...
      uint4 vv[kMaxValueLoads];
      const int per_lane = (n + groups - 1) / groups;
#pragma unroll
      for (int t = 0; t < kMaxValueLoads; ++t) {
        const int jj = g + t * groups;
        if (g < groups && t < per_lane && jj < n) vv[t] = __ldcg(value_row(j0 + jj) + col);
      }
      const int j = j0 + lane;
      float s = -INFINITY;
      if (lane < n) {
        const uint4* kr = key_row(j);
        s = 0.0f;
        for (int c0 = 0; c0 < DV; c0 += 8) {
          uint4 kv[8];
#pragma unroll
          for (int c = 0; c < 8; ++c)
            if (c0 + c < DV) kv[c] = __ldcg(kr + c0 + c);
#pragma unroll
          for (int c = 0; c < 8; ++c) {
            if (c0 + c >= DV) break;
            const T* kp = reinterpret_cast<const T*>(&kv[c]);
#pragma unroll
            for (int e = 0; e < V; ++e) s += qs[(c0 + c) * V + e] * to_f32(kp[e]);
          }
        }
        if (a.bias_table) s += a.bias_table[int64_t(a.bucket[j - qpos + a.bucket_center]) * a.heads + h];
      }
      const float m_new = fmaxf(m, warp_max(s));
      const float correction = m == -INFINITY ? 0.0f : expf(m - m_new);
      const float p = lane < n ? expf(s - m_new) : 0.0f;
      l = l * correction + warp_sum(p);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] *= correction;
#pragma unroll
      for (int t = 0; t < kMaxValueLoads; ++t) {
        const int jj = g + t * groups;
        const float pj = __shfl_sync(0xffffffffu, p, jj & 31);
        const T* vp = reinterpret_cast<const T*>(&vv[t]);
        if (g < groups && t < per_lane && jj < n)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += pj * to_f32(vp[e]);
      }
      for (int t = kMaxValueLoads; t < per_lane; ++t) {  // heads too wide for one load of every key at once
        const int jj = g + t * groups;
        const float pj = __shfl_sync(0xffffffffu, p, jj & 31);
        if (g < groups && jj < n) {
          const uint4 v = __ldcg(value_row(j0 + jj) + col);
          const T* vp = reinterpret_cast<const T*>(&v);
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += pj * to_f32(vp[e]);
        }
      }
      m = m_new;
    }
    // Sum the groups' partial values: column c's V elements from every group.
    if (g < groups)
#pragma unroll
      for (int e = 0; e < V; ++e) sums[g * D + col * V + e] = acc[e];
    __syncwarp();
    float out_v[kMaxHeadDim / 32];
#pragma unroll
    for (int i = 0; i < kMaxHeadDim / 32; ++i) {
      const int d = lane + 32 * i;
      float v = 0.0f;
      if (d < D)
        for (int gg = 0; gg < groups; ++gg) v += sums[gg * D + d];
      out_v[i] = v;
    }
    if (fresh && fresh_pos >= k0 && fresh_pos < k1)  // the new token's key and value into the cache
      for (int d = lane; d < D; d += 32) {
        kb[int64_t(fresh_pos) * a.kv_stride + d] = load_cg(fresh + a.fresh_k_offset + d);
        vb[int64_t(fresh_pos) * a.kv_stride + d] = load_cg(fresh + a.fresh_v_offset + d);
      }
    T* out = static_cast<T*>(a.out) + int64_t(h) * D;
    if (splits == 1) {
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxHeadDim / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < D) out[d] = from_f32<T>(out_v[i] * inv);
      }
      __syncwarp();
      continue;
    }
    float* parts = a.partials + int64_t(h) * splits * (D + 2);
    float* part = parts + sp * (D + 2);
    if (lane == 0) {
      part[0] = m;
      part[1] = l;
    }
#pragma unroll
    for (int i = 0; i < kMaxHeadDim / 32; ++i) {
      const int d = lane + 32 * i;
      if (d < D) part[2 + d] = out_v[i];
    }
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(a.split_counters + h, 1) == splits - 1;
    last = __shfl_sync(0xffffffffu, last, 0);
    if (!last) continue;
    __threadfence();
    // Lane s2 reads split s2's statistics; the merge weights go through shuffles.
    float M = -INFINITY, w_l = 0.0f;
    float ms = -INFINITY, ls = 0.0f;
    if (lane < splits) {
      ms = __ldcg(parts + lane * (D + 2));
      ls = __ldcg(parts + lane * (D + 2) + 1);
    }
    M = warp_max(ms);
    const float weight = ms == -INFINITY ? 0.0f : expf(ms - M);
    w_l = warp_sum(ls * weight);
    const float inv = w_l > 0.0f ? 1.0f / w_l : 0.0f;
    for (int d = lane; d < D; d += 32) {
      float v = 0.0f;
      for (int s2 = 0; s2 < splits; ++s2) {
        const float ws = __shfl_sync(0xffffffffu, weight, s2);
        if (ws != 0.0f) v += __ldcg(parts + s2 * (D + 2) + 2 + d) * ws;
      }
      out[d] = from_f32<T>(v * inv);
    }
    if (lane == 0) a.split_counters[h] = 0;  // ready for the next step
    __syncwarp();
  }
}

__global__ void __launch_bounds__(kThreads, 1) step_kernel(const char* program, int n_ops) {
  extern __shared__ __align__(16) char smem[];
  __shared__ float red[32];  // block_sum()'s scratch
  unsigned* barrier = reinterpret_cast<unsigned*>(const_cast<char*>(program));
  const StepOp* ops = reinterpret_cast<const StepOp*>(program + kOpsOffset);
  const int warp = threadIdx.x >> 5;
  const bool control = warp == kWarps;
  const int64_t S = int64_t(gridDim.x) * kWarps;
  const int64_t gw = int64_t(warp) * gridDim.x + blockIdx.x;
  const Ring ring{reinterpret_cast<uint4*>(smem) + int64_t(warp) * kDepth * 2 * kChunk * 32};
  char* stage = smem + kRingBytes;
  float* scratch =
      reinterpret_cast<float*>(smem + kRingBytes + kStageBytes) + (control ? 0 : warp) * kScratchFloats;

  const unsigned flags = barrier[2];  // KESTREL_STEP_DEBUG (timing experiments; results are wrong)
  WeightFeed feed{ops, n_ops, 0, gw, S};
  if (!control) {
    feed.seek(0);
    for (int s = 0; s < kDepth; ++s) feed.issue(ring, s);
  }
  int slot = 0;
  unsigned target = 0;
  for (int i = 0; i < n_ops; ++i) {
    const StepOp& op = ops[i];
    switch (op.kind) {
      case StepKind::Embed:
        embed_phase(op.embed);
        break;
      case StepKind::Linear:
        if (op.linear.wt == DType::F32)
          linear_phase<float>(op.linear, ring, feed, slot, stage, red, scratch, flags);
        else if (op.linear.wt == DType::F16)
          linear_phase<__half>(op.linear, ring, feed, slot, stage, red, scratch, flags);
        else
          linear_phase<__nv_bfloat16>(op.linear, ring, feed, slot, stage, red, scratch, flags);
        break;
      case StepKind::Attention:
        if (control || (flags & 2)) break;
        if (op.attention.dtype == DType::F32)
          attention_phase<float>(op.attention, scratch, gw, S);
        else if (op.attention.dtype == DType::F16)
          attention_phase<__half>(op.attention, scratch, gw, S);
        else
          attention_phase<__nv_bfloat16>(op.attention, scratch, gw, S);
        break;
    }
    if (i + 1 < n_ops && !(flags & 1)) grid_barrier(barrier, target);
  }
  cp_async_wait<0>();
  // The last block out resets the counters for the next launch (every block has passed every barrier).
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(barrier + 1, 1) == gridDim.x - 1) {
      barrier[0] = 0;
      barrier[1] = 0;
      __threadfence();
    }
  }
}

bool fits16(int64_t elements, DType t) {
  return (elements * int64_t(dtype_size(t))) % 16 == 0;
}

}  // namespace

bool step_kernel_supports(const StepOp& op) {
  switch (op.kind) {
    case StepKind::Embed:
      return true;
    case StepKind::Linear: {
      const StepLinear& L = op.linear;
      const bool staged = L.in.gamma || L.in.xt != L.wt;
      const bool fits_stage = size_t(L.K) * dtype_size(L.wt) <= kStageBytes;
      return !L.in.rows && fits16(L.K, L.wt) && aligned16(L.W) &&
             (fits_stage || (!staged && aligned16(L.in.x))) && (L.in.xt == DType::F32 || L.in.xt == L.wt) &&
             (L.yt == DType::F32 || L.yt == L.wt) && (!L.gated || !L.bias);
    }
    case StepKind::Attention: {
      const AttentionArgs& a = op.attention;
      return a.T == 1 && a.head_dim >= 1 && a.head_dim <= kMaxHeadDim && fits16(a.head_dim, a.dtype) &&
             aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && fits16(a.kv_stride, a.dtype) &&
             (!a.fresh || (aligned16(a.fresh) && fits16(a.fresh_k_offset, a.dtype) &&
                           fits16(a.fresh_v_offset, a.dtype))) &&
             a.partials && a.split_counters;
    }
  }
  return false;
}

size_t step_program_bytes(size_t n_ops) {
  return kOpsOffset + n_ops * sizeof(StepOp);
}

void upload_step_program(const std::vector<StepOp>& ops, void* program, Stream stream) {
  std::vector<char> host(step_program_bytes(ops.size()), 0);
  // KESTREL_STEP_DEBUG (bits: 1 no barriers, 2 no attention, 4 no linear arithmetic, 8 no input staging, 16
  // no output stores) leaves parts of the step
  // out, for finding where its time goes; results are then wrong.
  const unsigned flags = unsigned(env_int("KESTREL_STEP_DEBUG"));
  std::memcpy(host.data() + 2 * sizeof(unsigned), &flags, sizeof flags);
  std::memcpy(host.data() + kOpsOffset, ops.data(), ops.size() * sizeof(StepOp));
  check(int(cudaMemcpyAsync(program, host.data(), host.size(), cudaMemcpyHostToDevice, stream)),
        "uploading the decode step program");
  check(int(cudaStreamSynchronize(stream)), "uploading the decode step program");
}

void run_step_program(const void* program, size_t n_ops, Stream stream) {
  static std::atomic<size_t> allowed{0};
  allow_shared_memory(step_kernel, kSmemBytes, allowed, "decode step kernel");
  const int sms = sm_count();
  int per_sm = 0;
  check(int(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, step_kernel, kThreads, kSmemBytes)),
        "step kernel");
  if (per_sm < 1) internal_error("step kernel: a block does not fit on an SM");
  // Every block must be resident at once (grid barriers): one per SM, launched cooperatively so the driver
  // guarantees it.
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  launch_ex(step_kernel, dim3(unsigned(sms)), dim3(kThreads), kSmemBytes, stream, &cooperative,
            "step kernel launch", static_cast<const char*>(program), int(n_ops));
}

}  // namespace kestrel::cuda
