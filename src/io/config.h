#pragma once
// Typed model configs read from a Hugging Face config.json (+ generation_config.json).
// Only fields that change the computation or the generation defaults are kept; an unknown model_type or an
// unsupported value (e.g. an activation Kestrel does not implement) is an error that names the field and file.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace kestrel {

// Element-wise activations of the FFN. transformers' ACT2FN keys map onto these: gelu_new, gelu_fast,
// gelu_pytorch_tanh and gelu_accurate are all the tanh approximation; gelu and gelu_python are the exact erf form.
enum class Activation { GeluTanh, GeluErf, QuickGelu, Relu, Silu, Tanh, Sigmoid, Linear };
Activation parse_activation(const std::string& name, const std::string& where);  // throws naming `where`
std::string activation_name(Activation a);

struct GPT2Config {
  int64_t n_layer = 12, n_embd = 768, n_head = 12, n_inner = 0 /* 0 means 4*n_embd */, n_positions = 1024;
  int64_t vocab_size = 50257;
  double layer_norm_epsilon = 1e-5;
  Activation activation = Activation::GeluTanh;
  std::string activation_function = "gelu_new";  // as written in config.json
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool reorder_and_upcast_attn = false;  // changes only the fp16 accumulation path in transformers
  bool tie_word_embeddings = true;
  int64_t ffn_dim() const { return n_inner > 0 ? n_inner : 4 * n_embd; }
  int64_t head_dim() const { return n_embd / n_head; }
};

struct T5Config {
  int64_t d_model = 512, d_kv = 64, d_ff = 2048, num_layers = 6, num_decoder_layers = 6, num_heads = 8;
  int64_t vocab_size = 32128;
  int64_t relative_attention_num_buckets = 32, relative_attention_max_distance = 128;
  Activation activation = Activation::Relu;  // from feed_forward_proj: "relu", "gated-gelu", "gated-silu", ...
  bool gated_ffn = false;                    // "gated-*": wi_0 (activated) * wi_1
  double layer_norm_epsilon = 1e-6;
  bool tie_word_embeddings = true;  // tied head: decoder output is scaled by d_model**-0.5 before lm_head
  // transformers 5 writes this key (and always ties the head unless lm_head.weight is stored); older configs do
  // not, and then it follows tie_word_embeddings, as transformers reads them.
  bool scale_decoder_outputs = true;
  int64_t inner_dim() const { return num_heads * d_kv; }
};

// Generation defaults: config.json's token ids, overridden by generation_config.json where it has them.
struct GenerationDefaults {
  std::optional<int64_t> bos_token_id, pad_token_id, decoder_start_token_id;
  std::vector<int64_t> eos_token_ids;  // generation_config may hold a list
  int64_t max_length = 20;
  std::optional<int64_t> max_new_tokens, min_new_tokens;
  int64_t min_length = 0;
  bool do_sample = false;
  int64_t num_beams = 1, num_return_sequences = 1;
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0, length_penalty = 1.0;
  int64_t top_k = 50, no_repeat_ngram_size = 0;
  bool early_stopping = false;
  bool early_stopping_never = false;  // generation_config.json's early_stopping: "never"
};

struct ModelConfig {
  std::string model_type;  // "gpt2" or "t5"
  std::variant<GPT2Config, T5Config> arch;
  GenerationDefaults generation;
  std::string source;  // the config.json path, for error messages

  bool is_gpt2() const { return std::holds_alternative<GPT2Config>(arch); }
  bool is_t5() const { return std::holds_alternative<T5Config>(arch); }
  const GPT2Config& gpt2() const { return std::get<GPT2Config>(arch); }
  const T5Config& t5() const { return std::get<T5Config>(arch); }
  int64_t vocab_size() const { return is_gpt2() ? gpt2().vocab_size : t5().vocab_size; }
};

// Reads dir/config.json and, if present, dir/generation_config.json.
ModelConfig load_config(const std::filesystem::path& dir);
// Parses already-loaded JSON (engine files and tests use this); `source` names the origin in errors.
ModelConfig parse_config(const nlohmann::json& config, const nlohmann::json* generation_config,
                         const std::string& source);
nlohmann::json config_to_json(const ModelConfig& c);  // for `kestrel inspect --json`

}  // namespace kestrel
