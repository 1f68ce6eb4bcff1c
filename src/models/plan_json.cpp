// Plan <-> JSON (see plan_json.h). Enums travel as their names so a file stays readable and a renumbering
// cannot silently change meaning.
#include "models/plan_json.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace kestrel {

using nlohmann::json;

namespace {

constexpr OpKind kOpKinds[] = {OpKind::Embed,     OpKind::PositionBias, OpKind::Norm,       OpKind::Linear,
                               OpKind::Attention, OpKind::StoreKV,      OpKind::TakeOutputs};

const char* layout_name(StoredLayout l) {
  switch (l) {
    case StoredLayout::OutIn:
      return "out_in";
    case StoredLayout::InOut:
      return "in_out";
    case StoredLayout::Vector:
      return "vector";
    case StoredLayout::Table:
      return "table";
  }
  return "?";
}

const char* kv_name(KVSource k) {
  switch (k) {
    case KVSource::Local:
      return "local";
    case KVSource::Self:
      return "self";
    case KVSource::Cross:
      return "cross";
  }
  return "?";
}

// Reads typed fields of one JSON object, naming the object in errors.
class Reader {
 public:
  Reader(const json& j, std::string where) : j_(j), where_(std::move(where)) {
    if (!j.is_object()) bad("is not an object");
  }
  [[noreturn]] void bad(const std::string& what) const { fail(where_ + " " + what); }
  const json& at(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end()) bad("has no '" + std::string(key) + "'");
    return *it;
  }
  std::string str(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) bad("'" + std::string(key) + "' is not a string");
    return v.get<std::string>();
  }
  int64_t integer(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_integer()) bad("'" + std::string(key) + "' is not an integer");
    return v.get<int64_t>();
  }
  double number(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) bad("'" + std::string(key) + "' is not a number");
    return v.get<double>();
  }
  bool boolean(const char* key) const {
    const json& v = at(key);
    if (!v.is_boolean()) bad("'" + std::string(key) + "' is not a boolean");
    return v.get<bool>();
  }
  std::vector<std::string> strings(const char* key) const {
    const json& v = at(key);
    std::vector<std::string> out;
    if (!v.is_array()) bad("'" + std::string(key) + "' is not a list");
    for (const json& e : v) {
      if (!e.is_string()) bad("'" + std::string(key) + "' holds a non-string");
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  Shape shape(const char* key) const {
    const json& v = at(key);
    Shape out;
    if (!v.is_array()) bad("'" + std::string(key) + "' is not a list");
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > (int64_t(1) << 40))
        bad("'" + std::string(key) + "' holds an invalid dimension");
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
  const std::string& where() const { return where_; }

 private:
  const json& j_;
  std::string where_;
};

template <typename E, size_t N>
E parse_enum(const std::string& name, const E (&values)[N], const char* (*name_of)(E), const Reader& r,
             const char* key) {
  for (E v : values)
    if (name == name_of(v)) return v;
  r.bad("has an unknown " + std::string(key) + " '" + name + "'");
}

json op_to_json(const Op& op) {
  return {{"kind", op_kind_name(op.kind)},
          {"inputs", op.inputs},
          {"output", op.output},
          {"weights", op.weights},
          {"norm", op.norm == NormKind::RMS ? "rms" : "layer"},
          {"eps", op.eps},
          {"out_scale", op.out_scale},
          {"act", activation_name(op.act)},
          {"gated", op.gated},
          {"residual", op.residual},
          {"heads", op.heads},
          {"head_dim", op.head_dim},
          {"scale", op.scale},
          {"causal", op.causal},
          {"kv", kv_name(op.kv)},
          {"slot", op.slot},
          {"bias", op.bias},
          {"bidirectional", op.bidirectional},
          {"num_buckets", op.num_buckets},
          {"max_distance", op.max_distance}};
}

Op op_from_json(const json& j, const std::string& where) {
  const Reader r(j, where);
  const std::string kind = r.str("kind");
  OpKind k = OpKind::Embed;
  bool known = false;
  for (OpKind candidate : kOpKinds)
    if (op_kind_name(candidate) == kind) k = candidate, known = true;
  if (!known) r.bad("has an unknown op kind '" + kind + "'");
  Op op(k);
  op.inputs = r.strings("inputs");
  op.output = r.str("output");
  op.weights = r.strings("weights");
  const std::string norm = r.str("norm");
  if (norm != "rms" && norm != "layer") r.bad("has an unknown norm '" + norm + "'");
  op.norm = norm == "rms" ? NormKind::RMS : NormKind::Layer;
  op.eps = r.number("eps");
  op.out_scale = float(r.number("out_scale"));
  // activation_name() spells the kernel's form (e.g. gelu_tanh), not a config key: look it up by that name.
  static constexpr Activation kActs[] = {Activation::GeluTanh, Activation::GeluErf, Activation::QuickGelu,
                                         Activation::Relu,     Activation::Silu,    Activation::Tanh,
                                         Activation::Sigmoid,  Activation::Linear};
  const std::string act = r.str("act");
  bool act_known = false;
  for (Activation a : kActs)
    if (activation_name(a) == act) op.act = a, act_known = true;
  if (!act_known) r.bad("has an unknown activation '" + act + "'");
  op.gated = r.boolean("gated");
  op.residual = r.boolean("residual");
  op.heads = r.integer("heads");
  op.head_dim = r.integer("head_dim");
  op.scale = float(r.number("scale"));
  op.causal = r.boolean("causal");
  static constexpr KVSource kKv[] = {KVSource::Local, KVSource::Self, KVSource::Cross};
  op.kv = parse_enum(r.str("kv"), kKv, kv_name, r, "kv");
  op.slot = r.integer("slot");
  op.bias = r.str("bias");
  op.bidirectional = r.boolean("bidirectional");
  op.num_buckets = r.integer("num_buckets");
  op.max_distance = r.integer("max_distance");
  if (op.heads < 0 || op.head_dim < 0 || op.slot < -1 || op.num_buckets < 0 || op.max_distance < 0)
    r.bad("has a negative size or slot");
  return op;
}

std::vector<Op> program_from_json(const json& j, const std::string& where) {
  if (!j.is_array()) fail(where + " is not a list");
  std::vector<Op> ops;
  for (size_t i = 0; i < j.size(); ++i) ops.push_back(op_from_json(j[i], where + " op " + std::to_string(i)));
  return ops;
}

}  // namespace

json plan_to_json(const Plan& plan) {
  json weights = json::array();
  for (const WeightSpec& w : plan.weights) {
    json sources = json::array();
    for (const WeightSource& s : w.sources)
      sources.push_back({{"tensor", s.tensor}, {"layout", layout_name(s.layout)}, {"shape", s.shape}});
    weights.push_back({{"name", w.name}, {"shape", w.shape}, {"sources", sources}});
  }
  json encoder = json::array(), decoder = json::array();
  for (const Op& op : plan.encoder) encoder.push_back(op_to_json(op));
  for (const Op& op : plan.decoder) decoder.push_back(op_to_json(op));
  return {{"architecture", plan.architecture},
          {"weights", weights},
          {"buffers", plan.buffers},
          {"encoder", encoder},
          {"decoder", decoder},
          {"self_slots", plan.self_slots},
          {"cross_slots", plan.cross_slots},
          {"kv_width", plan.kv_width},
          {"embed_positions", plan.embed_positions},
          {"max_positions", plan.max_positions}};
}

Plan plan_from_json(const json& j, const std::string& source) {
  const Reader r(j, source + ": plan");
  Plan plan;
  plan.architecture = r.str("architecture");
  const json& weights = r.at("weights");
  if (!weights.is_array()) r.bad("'weights' is not a list");
  for (size_t i = 0; i < weights.size(); ++i) {
    const Reader w(weights[i], r.where() + " weight " + std::to_string(i));
    WeightSpec spec;
    spec.name = w.str("name");
    spec.shape = w.shape("shape");
    const json& sources = w.at("sources");
    if (!sources.is_array()) w.bad("'sources' is not a list");
    for (size_t k = 0; k < sources.size(); ++k) {
      const Reader s(sources[k], w.where() + " source " + std::to_string(k));
      static constexpr StoredLayout kLayouts[] = {StoredLayout::OutIn, StoredLayout::InOut,
                                                  StoredLayout::Vector, StoredLayout::Table};
      spec.sources.push_back({s.str("tensor"),
                              parse_enum(s.str("layout"), kLayouts, layout_name, s, "layout"),
                              s.shape("shape")});
    }
    plan.weights.push_back(std::move(spec));
  }
  const json& buffers = r.at("buffers");
  if (!buffers.is_object()) r.bad("'buffers' is not an object");
  for (const auto& [name, width] : buffers.items()) {
    if (!width.is_number_integer() || width.get<int64_t>() < 0)
      r.bad("buffer '" + name + "' has a bad width");
    plan.buffers[name] = width.get<int64_t>();
  }
  plan.encoder = program_from_json(r.at("encoder"), r.where() + " encoder");
  plan.decoder = program_from_json(r.at("decoder"), r.where() + " decoder");
  plan.self_slots = r.integer("self_slots");
  plan.cross_slots = r.integer("cross_slots");
  plan.kv_width = r.integer("kv_width");
  plan.embed_positions = r.boolean("embed_positions");
  plan.max_positions = r.integer("max_positions");
  // Every name an op uses must exist, or a session would fail deep inside a forward.
  auto check_program = [&](const std::vector<Op>& ops, const char* which) {
    for (const Op& op : ops) {
      for (const std::string& w : op.weights) {
        bool found = false;
        for (const WeightSpec& spec : plan.weights) found = found || spec.name == w;
        if (!found) r.bad(std::string(which) + " op uses unknown weight '" + w + "'");
      }
      for (const std::string& b : op.inputs)
        if (!plan.buffers.count(b)) r.bad(std::string(which) + " op reads unknown buffer '" + b + "'");
      if (!op.output.empty() && !plan.buffers.count(op.output))
        r.bad(std::string(which) + " op writes unknown buffer '" + op.output + "'");
    }
  };
  check_program(plan.encoder, "encoder");
  check_program(plan.decoder, "decoder");
  return plan;
}

}  // namespace kestrel
