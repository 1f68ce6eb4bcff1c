#include "io/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace kestrel {

using nlohmann::json;

Activation parse_activation(const std::string& name, const std::string& where) {
  if (name == "gelu_new" || name == "gelu_fast" || name == "gelu_pytorch_tanh" || name == "gelu_accurate")
    return Activation::GeluTanh;
  if (name == "gelu" || name == "gelu_python") return Activation::GeluErf;
  if (name == "quick_gelu") return Activation::QuickGelu;
  if (name == "relu") return Activation::Relu;
  if (name == "silu" || name == "swish") return Activation::Silu;
  if (name == "tanh") return Activation::Tanh;
  if (name == "sigmoid") return Activation::Sigmoid;
  if (name == "linear") return Activation::Linear;
  fail(where + ": unsupported activation '" + name +
       "' (supported: gelu_new, gelu_fast, gelu_pytorch_tanh, gelu_accurate, gelu, gelu_python, quick_gelu, relu, "
       "silu, swish, tanh, sigmoid, linear)");
}

std::string activation_name(Activation a) {
  switch (a) {
    case Activation::GeluTanh: return "gelu_tanh";
    case Activation::GeluErf: return "gelu";
    case Activation::QuickGelu: return "quick_gelu";
    case Activation::Relu: return "relu";
    case Activation::Silu: return "silu";
    case Activation::Tanh: return "tanh";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::Linear: return "linear";
  }
  return "?";
}

namespace {

json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  if (!in) fail(p.string() + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail(p.string() + ": invalid JSON: " + e.what());
  }
}

// Typed field access: missing or null -> default; present with the wrong type -> an error naming field and file.
template <typename T>
T field(const json& j, const char* key, T def, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  try {
    if constexpr (std::is_same_v<T, int64_t>) {
      if (!it->is_number_integer()) throw std::runtime_error("not an integer");
      return it->get<int64_t>();
    } else if constexpr (std::is_same_v<T, double>) {
      if (!it->is_number()) throw std::runtime_error("not a number");
      return it->get<double>();
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) throw std::runtime_error("not a boolean");
      return it->get<bool>();
    } else {
      if (!it->is_string()) throw std::runtime_error("not a string");
      return it->get<std::string>();
    }
  } catch (const std::exception& e) {
    fail(src + ": field '" + key + "' has the wrong type (" + e.what() + "): " + it->dump());
  }
}

std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) fail(src + ": field '" + key + "' must be an integer: " + it->dump());
  return it->get<int64_t>();
}

void require_positive(int64_t v, const char* key, const std::string& src) {
  if (v <= 0) fail(src + ": field '" + std::string(key) + "' must be positive, got " + std::to_string(v));
}

GPT2Config parse_gpt2(const json& j, const std::string& src) {
  GPT2Config c;
  c.n_layer = field<int64_t>(j, "n_layer", c.n_layer, src);
  c.n_embd = field<int64_t>(j, "n_embd", c.n_embd, src);
  c.n_head = field<int64_t>(j, "n_head", c.n_head, src);
  c.n_inner = field<int64_t>(j, "n_inner", 0, src);
  c.n_positions = field<int64_t>(j, "n_positions", c.n_positions, src);
  c.vocab_size = field<int64_t>(j, "vocab_size", c.vocab_size, src);
  c.layer_norm_epsilon = field<double>(j, "layer_norm_epsilon", c.layer_norm_epsilon, src);
  c.activation_function = field<std::string>(j, "activation_function", c.activation_function, src);
  c.activation = parse_activation(c.activation_function, src + ": activation_function");
  c.scale_attn_weights = field<bool>(j, "scale_attn_weights", c.scale_attn_weights, src);
  c.scale_attn_by_inverse_layer_idx =
      field<bool>(j, "scale_attn_by_inverse_layer_idx", c.scale_attn_by_inverse_layer_idx, src);
  c.reorder_and_upcast_attn = field<bool>(j, "reorder_and_upcast_attn", c.reorder_and_upcast_attn, src);
  c.tie_word_embeddings = field<bool>(j, "tie_word_embeddings", true, src);
  require_positive(c.n_layer, "n_layer", src);
  require_positive(c.n_embd, "n_embd", src);
  require_positive(c.n_head, "n_head", src);
  require_positive(c.n_positions, "n_positions", src);
  require_positive(c.vocab_size, "vocab_size", src);
  if (c.n_inner < 0) fail(src + ": field 'n_inner' must be positive or null");
  if (c.n_embd % c.n_head != 0)
    fail(src + ": n_embd (" + std::to_string(c.n_embd) + ") is not divisible by n_head (" +
         std::to_string(c.n_head) + ")");
  return c;
}

T5Config parse_t5(const json& j, const std::string& src) {
  T5Config c;
  c.d_model = field<int64_t>(j, "d_model", c.d_model, src);
  c.d_kv = field<int64_t>(j, "d_kv", c.d_kv, src);
  c.d_ff = field<int64_t>(j, "d_ff", c.d_ff, src);
  c.num_layers = field<int64_t>(j, "num_layers", c.num_layers, src);
  c.num_decoder_layers = field<int64_t>(j, "num_decoder_layers", c.num_layers, src);
  c.num_heads = field<int64_t>(j, "num_heads", c.num_heads, src);
  c.vocab_size = field<int64_t>(j, "vocab_size", c.vocab_size, src);
  c.relative_attention_num_buckets =
      field<int64_t>(j, "relative_attention_num_buckets", c.relative_attention_num_buckets, src);
  c.relative_attention_max_distance =
      field<int64_t>(j, "relative_attention_max_distance", c.relative_attention_max_distance, src);
  c.layer_norm_epsilon = field<double>(j, "layer_norm_epsilon", c.layer_norm_epsilon, src);
  c.tie_word_embeddings = field<bool>(j, "tie_word_embeddings", true, src);
  c.scale_decoder_outputs = field<bool>(j, "scale_decoder_outputs", c.tie_word_embeddings, src);
  // transformers: act_info = feed_forward_proj.split("-"); "gated-gelu" is special-cased to gelu_new.
  std::string ffp = field<std::string>(j, "feed_forward_proj", "relu", src);
  std::string act = ffp;
  if (ffp.rfind("gated-", 0) == 0) {
    c.gated_ffn = true;
    act = ffp.substr(6);
    if (act == "gelu") act = "gelu_new";
  }
  if (act.empty() || act.find('-') != std::string::npos)
    fail(src + ": feed_forward_proj '" + ffp + "' is not a valid activation; use 'gated-{ACT}' or '{ACT}'");
  c.activation = parse_activation(act, src + ": feed_forward_proj");
  for (auto [v, k] : {std::pair{c.d_model, "d_model"}, {c.d_kv, "d_kv"}, {c.d_ff, "d_ff"},
                      {c.num_layers, "num_layers"}, {c.num_decoder_layers, "num_decoder_layers"},
                      {c.num_heads, "num_heads"}, {c.vocab_size, "vocab_size"},
                      {c.relative_attention_num_buckets, "relative_attention_num_buckets"},
                      {c.relative_attention_max_distance, "relative_attention_max_distance"}})
    require_positive(v, k, src);
  return c;
}

// eos_token_id may be an int or a list of ints.
std::vector<int64_t> eos_list(const json& j, const std::string& src) {
  auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  if (it->is_array()) {
    std::vector<int64_t> out;
    for (auto& v : *it) {
      if (!v.is_number_integer()) fail(src + ": eos_token_id list must hold integers: " + it->dump());
      out.push_back(v.get<int64_t>());
    }
    return out;
  }
  fail(src + ": eos_token_id must be an integer or a list: " + it->dump());
}

void apply_generation(GenerationDefaults& g, const json& j, const std::string& src) {
  if (auto v = opt_int(j, "bos_token_id", src)) g.bos_token_id = v;
  if (auto v = opt_int(j, "pad_token_id", src)) g.pad_token_id = v;
  if (auto v = opt_int(j, "decoder_start_token_id", src)) g.decoder_start_token_id = v;
  if (auto e = eos_list(j, src); !e.empty()) g.eos_token_ids = e;
  g.max_length = field<int64_t>(j, "max_length", g.max_length, src);
  if (auto v = opt_int(j, "max_new_tokens", src)) g.max_new_tokens = v;
  if (auto v = opt_int(j, "min_new_tokens", src)) g.min_new_tokens = v;
  g.min_length = field<int64_t>(j, "min_length", g.min_length, src);
  g.do_sample = field<bool>(j, "do_sample", g.do_sample, src);
  g.num_beams = field<int64_t>(j, "num_beams", g.num_beams, src);
  g.num_return_sequences = field<int64_t>(j, "num_return_sequences", g.num_return_sequences, src);
  g.temperature = field<double>(j, "temperature", g.temperature, src);
  g.top_k = field<int64_t>(j, "top_k", g.top_k, src);
  g.top_p = field<double>(j, "top_p", g.top_p, src);
  g.repetition_penalty = field<double>(j, "repetition_penalty", g.repetition_penalty, src);
  g.length_penalty = field<double>(j, "length_penalty", g.length_penalty, src);
  g.no_repeat_ngram_size = field<int64_t>(j, "no_repeat_ngram_size", g.no_repeat_ngram_size, src);
  if (auto it = j.find("early_stopping"); it != j.end() && !it->is_null()) {
    if (it->is_boolean()) {
      g.early_stopping = it->get<bool>();
      g.early_stopping_never = false;
    } else if (it->is_string() && it->get<std::string>() == "never") {
      g.early_stopping_never = true;
    } else {
      fail(src + ": field 'early_stopping' must be true, false or \"never\": " + it->dump());
    }
  }
}

}  // namespace

ModelConfig parse_config(const json& j, const json* gen, const std::string& src) {
  if (!j.is_object()) fail(src + ": config must be a JSON object");
  ModelConfig c;
  c.source = src;
  c.model_type = field<std::string>(j, "model_type", "", src);
  if (c.model_type == "gpt2") {
    c.arch = parse_gpt2(j, src);
  } else if (c.model_type == "t5") {
    c.arch = parse_t5(j, src);
    c.generation.decoder_start_token_id = 0;
    c.generation.pad_token_id = 0;
    c.generation.eos_token_ids = {1};
  } else if (c.model_type.empty()) {
    fail(src + ": no 'model_type' field; Kestrel supports model_type 'gpt2' and 't5'");
  } else {
    fail(src + ": unsupported model_type '" + c.model_type + "'; Kestrel supports 'gpt2' and 't5'");
  }
  apply_generation(c.generation, j, src);
  if (gen) {
    if (!gen->is_object()) fail(src + ": generation config must be a JSON object");
    apply_generation(c.generation, *gen, src + " (generation_config.json)");
  }
  return c;
}

ModelConfig load_config(const std::filesystem::path& dir) {
  const auto cfg_path = dir / "config.json";
  if (!std::filesystem::exists(cfg_path)) fail(dir.string() + ": no config.json (is this a Hugging Face model folder?)");
  json cfg = read_json(cfg_path);
  const auto gen_path = dir / "generation_config.json";
  if (std::filesystem::exists(gen_path)) {
    json gen = read_json(gen_path);
    return parse_config(cfg, &gen, cfg_path.string());
  }
  return parse_config(cfg, nullptr, cfg_path.string());
}

json config_to_json(const ModelConfig& c) {
  json j;
  j["model_type"] = c.model_type;
  if (c.is_gpt2()) {
    const auto& g = c.gpt2();
    j["n_layer"] = g.n_layer;
    j["n_embd"] = g.n_embd;
    j["n_head"] = g.n_head;
    j["n_inner"] = g.ffn_dim();
    j["n_positions"] = g.n_positions;
    j["vocab_size"] = g.vocab_size;
    j["layer_norm_epsilon"] = g.layer_norm_epsilon;
    j["activation_function"] = g.activation_function;
    j["scale_attn_weights"] = g.scale_attn_weights;
    j["scale_attn_by_inverse_layer_idx"] = g.scale_attn_by_inverse_layer_idx;
    j["reorder_and_upcast_attn"] = g.reorder_and_upcast_attn;
    j["tie_word_embeddings"] = g.tie_word_embeddings;
  } else {
    const auto& t = c.t5();
    j["d_model"] = t.d_model;
    j["d_kv"] = t.d_kv;
    j["d_ff"] = t.d_ff;
    j["num_layers"] = t.num_layers;
    j["num_decoder_layers"] = t.num_decoder_layers;
    j["num_heads"] = t.num_heads;
    j["vocab_size"] = t.vocab_size;
    j["relative_attention_num_buckets"] = t.relative_attention_num_buckets;
    j["relative_attention_max_distance"] = t.relative_attention_max_distance;
    j["feed_forward_proj"] = (t.gated_ffn ? "gated-" : "") + activation_name(t.activation);
    j["layer_norm_epsilon"] = t.layer_norm_epsilon;
    j["tie_word_embeddings"] = t.tie_word_embeddings;
    j["scale_decoder_outputs"] = t.scale_decoder_outputs;
  }
  const auto& g = c.generation;
  json gj;
  if (g.bos_token_id) gj["bos_token_id"] = *g.bos_token_id;
  if (g.pad_token_id) gj["pad_token_id"] = *g.pad_token_id;
  if (g.decoder_start_token_id) gj["decoder_start_token_id"] = *g.decoder_start_token_id;
  gj["eos_token_id"] = g.eos_token_ids;
  gj["max_length"] = g.max_length;
  if (g.max_new_tokens) gj["max_new_tokens"] = *g.max_new_tokens;
  gj["do_sample"] = g.do_sample;
  gj["num_beams"] = g.num_beams;
  j["generation"] = gj;
  return j;
}

}  // namespace kestrel
