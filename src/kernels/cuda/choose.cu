// choose_tokens(): the next token of each row picked on the GPU from its fp32 logits, with transformers'
// processors for greedy decoding and sampling (generate/logits_processors.cpp is the host definition this
// mirrors step for step), so only token ids cross to the host.
//
// One block of 1024 threads per row, working on a private copy of the row in `work` (several rows may read
// the same logits row: num_return_sequences). In order:
//   1. copy; repetition penalty (gathered from the untouched logits: a token seen twice is penalised once);
//      eos suppressed below the minimum length. Greedy: first index of the maximum, done.
//   2. temperature; top-k: the k-th largest score found by a 4-pass radix select on the scores' bit patterns
//      (exact: ties with it stay, as on the host).
//   3. top-p over the survivors of top-k: up to kMaxSorted of them are sorted in shared memory (bitonic, by
//      score then index, the host's stable order) and one thread repeats the host's double-precision softmax
//      and float cumulative sum, so the same tokens are removed. More survivors (no top-k, or thousands of
//      scores tied with the k-th) give kChooseOnHost: the caller processes that row on the host.
//   4. categorical draw with the caller's uniform number: the probabilities' prefix sums in index order (a
//      block scan over contiguous chunks), the first token whose cumulative mass exceeds u * total.
// Beam search (candidates > 0) instead: log-softmax (log_softmax_inplace's arithmetic), the processors on
// the log-probs, plus the row's running score, then the best `candidates` (score, token) pairs by repeated
// block argmax.
#include <cfloat>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"

namespace kestrel::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr float kNegInf = -INFINITY;

// Order-preserving map of a float's bits to an unsigned key: a > b as floats <=> key(a) > key(b).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_order_key(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

struct ArgBest {
  float value;
  int index;
};
// Larger score wins; on equal scores the lower index (torch.argmax's first maximum).
struct BetterOf {
  __device__ ArgBest operator()(const ArgBest& a, const ArgBest& b) const {
    if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
    return a;
  }
};

struct Shared {
  union {
    cub::BlockReduce<ArgBest, kThreads>::TempStorage best;
    cub::BlockReduce<float, kThreads>::TempStorage max;
    cub::BlockScan<double, kThreads>::TempStorage scan;
  } cub;
  uint32_t histogram[256];
  uint32_t prefix, remaining;
  int survivors;
  int chosen, last_positive;
  float value;
  float sorted_score[kMaxSorted];
  int sorted_index[kMaxSorted];
};

// The k-th largest of w[0, V) (counting duplicates), by radix select over order keys, 8 bits a pass.
__device__ float kth_largest(const float* w, int V, int k, Shared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.remaining = uint32_t(k);
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.histogram[b] = 0;
    __syncthreads();
    const uint32_t prefix = sh.prefix;
    // Every lane takes every turn: the match below is warp-wide.
    for (int base = 0; base < V; base += kThreads) {
      const int v = base + int(threadIdx.x);
      const uint32_t key = v < V ? order_key(w[v]) : 0u;
      const bool mine = v < V && (key & mask) == prefix;
      const uint32_t bin = (key >> shift) & 0xffu;
      // Lanes adding to the same bin combine first: most scores share their top bits.
      const unsigned same = __match_any_sync(0xffffffffu, mine ? bin : 0x100u + (threadIdx.x & 31));
      if (mine && int(threadIdx.x & 31) == __ffs(same) - 1)
        atomicAdd(&sh.histogram[bin], uint32_t(__popc(same)));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t above = 0;  // keys with this prefix in higher bins
      for (int b = 255; b >= 0; --b) {
        if (above + sh.histogram[b] >= sh.remaining) {
          sh.remaining -= above;
          sh.prefix |= uint32_t(b) << shift;
          break;
        }
        above += sh.histogram[b];
      }
    }
    mask |= 0xffu << shift;
    __syncthreads();
  }
  return from_order_key(sh.prefix);
}

// Sorts the first n of sh.sorted_* ascending by (score, index), padding to kMaxSorted with +inf entries.
__device__ void sort_survivors(int n, Shared& sh) {
  for (int i = n + int(threadIdx.x); i < kMaxSorted; i += kThreads) {
    sh.sorted_score[i] = INFINITY;
    sh.sorted_index[i] = 0x7fffffff;
  }
  __syncthreads();
  for (int size = 2; size <= kMaxSorted; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < kMaxSorted; i += kThreads) {
        const int j = i ^ stride;
        if (j > i) {
          const bool ascending = (i & size) == 0;
          const float a = sh.sorted_score[i], b = sh.sorted_score[j];
          const int ia = sh.sorted_index[i], ib = sh.sorted_index[j];
          const bool a_after_b = a > b || (a == b && ia > ib);
          if (a_after_b == ascending) {
            sh.sorted_score[i] = b;
            sh.sorted_score[j] = a;
            sh.sorted_index[i] = ib;
            sh.sorted_index[j] = ia;
          }
        }
      }
      __syncthreads();
    }
  }
}

// TopPLogitsWarper over the finite scores of w; false (nothing changed) when more than kMaxSorted are finite.
__device__ bool top_p(float* w, int V, float threshold, int min_keep, Shared& sh) {
  if (threadIdx.x == 0) sh.survivors = 0;
  __syncthreads();
  for (int v = threadIdx.x; v < V; v += kThreads) {
    if (w[v] != kNegInf) {
      const int slot = atomicAdd(&sh.survivors, 1);
      if (slot < kMaxSorted) {
        sh.sorted_score[slot] = w[v];
        sh.sorted_index[slot] = v;
      }
    }
  }
  __syncthreads();
  const int n = sh.survivors;
  if (n > kMaxSorted) return false;
  if (n == 0) return true;
  sort_survivors(n, sh);
  if (threadIdx.x == 0) {
    // The host's softmax over all V sorted scores, where the -inf ones (first in ascending order) add 0.
    const double max = double(sh.sorted_score[n - 1]);
    double sum = 0;
    for (int j = 0; j < n; ++j) sum += exp(double(sh.sorted_score[j]) - max);
    float cumulative = 0;
    const int keep_from = n > min_keep ? n - min_keep : 0;  // among the survivors
    for (int j = 0; j < keep_from; ++j) {
      cumulative += float(exp(double(sh.sorted_score[j]) - max) / sum);
      if (cumulative > threshold) break;
      sh.sorted_index[j] = -1 - sh.sorted_index[j];  // marked for removal
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += kThreads)
    if (sh.sorted_index[j] < 0) w[-1 - sh.sorted_index[j]] = kNegInf;
  __syncthreads();
  return true;
}

// A categorical draw from softmax(w) in index order with uniform number u: the first token whose cumulative
// probability exceeds u * total; -1 when every score is -inf.
__device__ int draw(const float* w, int V, double u, Shared& sh) {
  float m = kNegInf;
  for (int v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, w[v]);
  m = cub::BlockReduce<float, kThreads>(sh.cub.max).Reduce(m, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) {
    sh.value = m;
    sh.chosen = 0x7fffffff;
    sh.last_positive = -1;
  }
  __syncthreads();
  const double max = double(sh.value);
  if (sh.value == kNegInf) return -1;
  const int chunk = (V + kThreads - 1) / kThreads;
  const int begin = min(V, int(threadIdx.x) * chunk), end = min(V, begin + chunk);
  auto prob = [&](int v) { return w[v] == kNegInf ? 0.0 : exp(double(w[v]) - max); };
  double mine = 0;
  int last = -1;
  for (int v = begin; v < end; ++v) {
    const double p = prob(v);
    mine += p;
    if (p > 0) last = v;
  }
  double before = 0, total = 0;
  cub::BlockScan<double, kThreads>(sh.cub.scan).ExclusiveSum(mine, before, total);
  const double target = u * total;
  if (last >= 0) atomicMax(&sh.last_positive, last);
  if (before <= target && target < before + mine) {
    double cumulative = before;
    for (int v = begin; v < end; ++v) {
      cumulative += prob(v);
      if (target < cumulative) {
        atomicMin(&sh.chosen, v);
        break;
      }
    }
  }
  __syncthreads();
  // Rounding may leave the target at the very top: the last token with mass (as the host does).
  return sh.chosen != 0x7fffffff ? sh.chosen : sh.last_positive;
}

__global__ void __launch_bounds__(kThreads) choose_kernel(ChooseArgs a) {
  __shared__ Shared sh;
  const ChooseRow row = a.rows[blockIdx.x];
  const int V = int(a.V);
  const float* src = a.logits + int64_t(row.logits_row) * a.V;
  float* w = a.work + int64_t(blockIdx.x) * a.V;
  pdl_wait();

  // Beam search processes log-probabilities: log_softmax_inplace's float arithmetic on a double sum.
  float max = 0.0f, log_sum = 0.0f;
  if (a.candidates > 0) {
    float m = kNegInf;
    for (int v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, src[v]);
    m = cub::BlockReduce<float, kThreads>(sh.cub.max).Reduce(m, [](float x, float y) { return fmaxf(x, y); });
    if (threadIdx.x == 0) sh.value = m;
    __syncthreads();
    max = sh.value;
    double sum = 0.0;
    for (int v = threadIdx.x; v < V; v += kThreads) sum += exp(double(src[v]) - double(max));
    double total = 0.0;
    __syncthreads();
    cub::BlockScan<double, kThreads>(sh.cub.scan).ExclusiveSum(sum, sum, total);
    log_sum = float(log(total));
  }
  auto processed = [&](float s) { return a.candidates > 0 && max != kNegInf ? (s - max) - log_sum : s; };
  for (int v = threadIdx.x; v < V; v += kThreads) w[v] = processed(src[v]);
  __syncthreads();
  if (a.repetition_penalty != 1.0f)  // from the untouched logits, so a token seen twice is penalised once
    for (int i = threadIdx.x; i < row.history_count; i += kThreads) {
      const int id = a.history[row.history_begin + i];
      if (id >= 0 && id < V) {
        const float s = processed(src[id]);
        w[id] = s < 0 ? s * a.repetition_penalty : s / a.repetition_penalty;
      }
    }
  if (row.suppress_eos)
    for (int e = threadIdx.x; e < a.n_eos; e += kThreads)
      if (a.eos[e] >= 0 && a.eos[e] < V) w[a.eos[e]] = kNegInf;
  __syncthreads();

  if (a.candidates > 0) {
    // The best `candidates` of w + add, best first (ties: lower token), as top_k_indices ranks them; a
    // taken score becomes NaN, which never compares better.
    for (int v = threadIdx.x; v < V; v += kThreads) w[v] += row.add;
    __syncthreads();
    for (int c = 0; c < a.candidates; ++c) {
      ArgBest best{kNegInf, 0x7fffffff};
      for (int v = threadIdx.x; v < V; v += kThreads) best = BetterOf()(best, ArgBest{w[v], v});
      best = cub::BlockReduce<ArgBest, kThreads>(sh.cub.best).Reduce(best, BetterOf());
      if (threadIdx.x == 0) {
        const int64_t slot = int64_t(blockIdx.x) * a.candidates + c;
        a.ids[slot] = best.index == 0x7fffffff ? -1 : best.index;
        a.scores[slot] = best.value;
        if (best.index != 0x7fffffff) w[best.index] = NAN;
      }
      __syncthreads();
    }
    return;
  }
  if (!a.sample) {
    ArgBest best{kNegInf, 0x7fffffff};
    for (int v = threadIdx.x; v < V; v += kThreads) best = BetterOf()(best, ArgBest{w[v], v});
    best = cub::BlockReduce<ArgBest, kThreads>(sh.cub.best).Reduce(best, BetterOf());
    if (threadIdx.x == 0) a.ids[blockIdx.x] = best.index == 0x7fffffff ? 0 : best.index;
    return;
  }
  if (a.temperature != 1.0f)
    for (int v = threadIdx.x; v < V; v += kThreads) w[v] /= a.temperature;
  __syncthreads();
  if (a.top_k > 0 && a.top_k < V) {
    const float kth = kth_largest(w, V, a.top_k, sh);
    for (int v = threadIdx.x; v < V; v += kThreads)
      if (w[v] < kth) w[v] = kNegInf;
    __syncthreads();
  }
  if (a.top_p && !top_p(w, V, a.top_p_threshold, a.min_keep, sh)) {
    if (threadIdx.x == 0) a.ids[blockIdx.x] = kChooseOnHost;
    return;
  }
  const int token = draw(w, V, row.uniform, sh);
  if (threadIdx.x == 0) a.ids[blockIdx.x] = token;
}

}  // namespace

void choose_tokens(const ChooseArgs& a, Stream stream) {
  if (a.R == 0) return;
  if (a.V < 1 || a.V > int64_t(0x7fffffff)) internal_error("choose_tokens: bad vocabulary size");
  launch_pdl(choose_kernel, dim3(unsigned(a.R)), dim3(kThreads), 0, stream, a);
  check_launch("choose_tokens");
}

}  // namespace kestrel::cuda
