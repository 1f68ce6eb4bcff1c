#include "models/plan.h"

#include <sstream>

#include "core/error.h"

namespace kestrel {

std::string op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::Embed:
      return "embed";
    case OpKind::PositionBias:
      return "position_bias";
    case OpKind::Norm:
      return "norm";
    case OpKind::Linear:
      return "linear";
    case OpKind::Attention:
      return "attention";
    case OpKind::StoreKV:
      return "store_kv";
    case OpKind::TakeOutputs:
      return "take_outputs";
  }
  return "?";
}

const WeightSpec& Plan::weight(const std::string& name) const {
  for (const auto& w : weights)
    if (w.name == name) return w;
  internal_error("plan has no weight '" + name + "'");
}

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

std::string op_line(const Op& op) {
  std::ostringstream o;
  o << op.output << " " << (op.residual ? "+=" : "=") << " " << op_kind_name(op.kind) << "("
    << join(op.inputs);
  if (!op.weights.empty()) o << "; " << join(op.weights);
  o << ")";
  switch (op.kind) {
    case OpKind::Norm:
      o << " " << (op.norm == NormKind::Layer ? "layer" : "rms") << " eps=" << op.eps;
      if (op.out_scale != 1.0f) o << " scale=" << op.out_scale;
      break;
    case OpKind::Linear:
      if (op.gated) o << " gated";
      if (op.act != Activation::Linear) o << " act=" << activation_name(op.act);
      break;
    case OpKind::Attention:
      o << " heads=" << op.heads << "x" << op.head_dim << " scale=" << op.scale
        << (op.causal ? " causal" : "") << " kv="
        << (op.kv == KVSource::Local  ? "local"
            : op.kv == KVSource::Self ? "self"
                                      : "cross");
      if (op.slot >= 0) o << " slot=" << op.slot;
      if (!op.bias.empty()) o << " bias=" << op.bias;
      break;
    case OpKind::PositionBias:
      o << (op.bidirectional ? " bidirectional" : " causal") << " buckets=" << op.num_buckets
        << " max_distance=" << op.max_distance;
      break;
    case OpKind::StoreKV:
      o << " slot=" << op.slot;
      break;
    default:
      break;
  }
  return o.str();
}

}  // namespace

std::string Plan::to_string() const {
  std::ostringstream o;
  o << "plan " << architecture << ": " << weights.size() << " weights, " << self_slots
    << " self-attention caches, " << cross_slots << " cross-attention caches\n";
  o << "buffers:\n";
  for (const auto& [name, width] : buffers) o << "  " << name << " [tokens, " << width << "]\n";
  o << "weights:\n";
  for (const auto& w : weights) {
    std::vector<std::string> src;
    for (const auto& s : w.sources)
      src.push_back(s.tensor + (s.layout == StoredLayout::InOut ? " (in,out)" : ""));
    o << "  " << w.name << " " << shape_str(w.shape) << " <- " << join(src) << "\n";
  }
  auto program = [&](const char* name, const std::vector<Op>& ops) {
    if (ops.empty()) return;
    o << name << ":\n";
    for (const auto& op : ops) o << "  " << op_line(op) << "\n";
  };
  program("encoder", encoder);
  program("decoder", decoder);
  return o.str();
}

}  // namespace kestrel
