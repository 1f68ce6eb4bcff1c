#pragma once
// A Plan is what a model definition (models/gpt2, models/t5) emits and the only thing a session executes:
//  - the weights it needs, each described in a backend-neutral way (a logical shape and the checkpoint
//  tensors it
//    is made of); build/ packs them into the layout a backend wants;
//  - named activation buffers ([rows, width] fp32; rows = tokens of the current forward unless an op says
//  so);
//  - programs: ordered lists of fused ops. GPT-2 has a "decoder" program; T5 also has an "encoder" program
//  that
//    runs once per request and ends by storing every layer's cross-attention K/V.
// Plans are printable (`to_string`) so `kestrel inspect --plan` can show exactly what will run.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"

namespace kestrel {

// How a checkpoint tensor stores a linear map: nn.Linear is [out, in]; GPT-2's Conv1D is [in, out].
enum class StoredLayout { OutIn, InOut, Vector, Table };

struct WeightSource {
  std::string tensor;  // checkpoint name (already resolved, e.g. with or without the "transformer." prefix)
  StoredLayout layout = StoredLayout::OutIn;
  Shape shape;  // as stored in the checkpoint (checked by the model definition)
};

// Logical shapes: a linear weight is [out, in] (several sources are stacked along `out`: fused QKV, gated
// FFN); a vector is [n]; a table (embedding, relative-position bias) is [rows, cols] as stored.
struct WeightSpec {
  std::string name;
  Shape shape;
  std::vector<WeightSource> sources;
  bool is_linear() const {
    return !sources.empty() &&
           (sources[0].layout == StoredLayout::OutIn || sources[0].layout == StoredLayout::InOut);
  }
};

enum class OpKind {
  Embed,         // out = table[id] (+ positions[pos]); reads the forward's token ids and positions
  PositionBias,  // out = T5 relative-position bias per head and relative distance, for this forward's lengths
  Norm,          // out = norm(in) * gamma (+ beta) [* out_scale]
  Linear,  // out = act(in · Wᵀ + b), or for gated: act(in · W0ᵀ) * (in · W1ᵀ); with residual: out += that
  Attention,  // per row and head: softmax(scale · q·kᵀ + bias, mask) · v, keys from a cache or the forward
  StoreKV,    // stores in = [K | V] of every row into cross-attention cache `slot`
  TakeOutputs,  // out = the rows whose logits are wanted (last token of each row, or all of them)
};

enum class NormKind { Layer, RMS };
// Where an attention op's keys/values come from.
enum class KVSource {
  Local,  // this forward's own tokens of the same row (T5 encoder); nothing is cached
  Self,   // appended to self-attention cache `slot`, then attended over the whole cache (decoders)
  Cross,  // the cross-attention cache `slot` filled by StoreKV (T5 decoder)
};

struct Op {
  explicit Op(OpKind k) : kind(k) {}
  OpKind kind;
  std::vector<std::string> inputs;   // buffer names
  std::string output;                // buffer name
  std::vector<std::string> weights;  // weight names (WeightSpec::name)
  // Norm
  NormKind norm = NormKind::Layer;
  double eps = 0;
  float out_scale = 1.0f;
  // Linear
  Activation act = Activation::Linear;
  bool gated = false;     // weight is [W0; W1] stacked: act(x W0ᵀ) * (x W1ᵀ)
  bool residual = false;  // add into `output` instead of overwriting it
  // Attention / PositionBias / StoreKV
  int64_t heads = 0, head_dim = 0;
  float scale = 1.0f;
  bool causal = false;
  KVSource kv = KVSource::Local;
  int64_t slot = -1;
  std::string bias;  // PositionBias buffer added to the scores, or empty
  bool bidirectional = false;
  int64_t num_buckets = 0, max_distance = 0;
};

struct Plan {
  std::string architecture;  // "gpt2" or "t5"
  std::vector<WeightSpec> weights;
  std::map<std::string, int64_t> buffers;  // name -> width (PositionBias buffers: number of heads)
  std::vector<Op> encoder;                 // empty for decoder-only models
  std::vector<Op> decoder;
  int64_t self_slots = 0, cross_slots = 0;  // KV caches per row
  int64_t kv_width = 0;                     // heads * head_dim of every cache slot
  bool embed_positions = false;             // decoder Embed adds learned positions (GPT-2)
  int64_t max_positions = INT64_MAX;

  const WeightSpec& weight(const std::string& name) const;  // throws internal_error when absent
  std::string to_string() const;
};

std::string op_kind_name(OpKind k);

}  // namespace kestrel
