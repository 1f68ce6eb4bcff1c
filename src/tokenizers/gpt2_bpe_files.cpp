// Reading a byte-level BPE tokenizer from its files: vocab.json + merges.txt, or a `tokenizers`
// tokenizer.json, plus what transformers takes from tokenizer_config.json / special_tokens_map.json.
#include <algorithm>

#include "core/error.h"
#include "tokenizers/gpt2_bpe.h"
#include "tokenizers/tokenizer_files.h"

namespace kestrel {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// GPT2Tokenizer's defaults when the config names no special tokens.
constexpr const char* kGpt2EndOfText = "<|endoftext|>";

std::unordered_map<std::string, int64_t> parse_vocab(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where + ": the vocabulary must be a JSON object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(j.size());
  for (const auto& [token, id] : j.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (int64_t(1) << 30))
      fail(where + ": token '" + token + "' has id " + id.dump() + "; ids must be integers in 0..2^30");
    vocab.emplace(token, id.get<int64_t>());
  }
  return vocab;
}

// merges.txt: an optional "#version" line, then one "left right" pair per line, highest priority first.
std::vector<BpeMergeRule> parse_merges_txt(const fs::path& path) {
  const std::string text = read_text_file(path);
  std::vector<BpeMergeRule> merges;
  size_t line_number = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.starts_with("#version"))) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
      fail(path.string() + " line " + std::to_string(line_number) +
           ": expected two tokens separated by one space, got '" + std::string(line) + "'");
    merges.push_back({std::string(line.substr(0, space)), std::string(line.substr(space + 1)),
                      path.string() + " line " + std::to_string(line_number)});
  }
  return merges;
}

// tokenizer.json model.merges: "left right" strings (older files) or ["left", "right"] pairs (newer ones).
std::vector<BpeMergeRule> parse_merges_json(const json& j, const std::string& file) {
  if (!j.is_array()) fail(file + ": model.merges must be a list");
  std::vector<BpeMergeRule> merges;
  merges.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string where = file + ": model.merges[" + std::to_string(i) + "]";
    const auto& m = j[i];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == s.size() ||
          s.find(' ', space + 1) != s.npos)
        fail(where + ": expected two tokens separated by one space, got '" + s + "'");
      merges.push_back({s.substr(0, space), s.substr(space + 1), where});
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.push_back({m[0].get<std::string>(), m[1].get<std::string>(), where});
    } else {
      fail(where + ": expected \"left right\" or [\"left\", \"right\"], got " + m.dump());
    }
  }
  return merges;
}

bool bool_field(const json& obj, const char* key, bool fallback, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) return fallback;
  if (!obj[key].is_boolean()) fail(where + ": '" + key + "' must be true or false");
  return obj[key].get<bool>();
}

AddedVocabulary::Token parse_added_token(const json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("content") || !j["content"].is_string())
    fail(where + ": an added token needs a string 'content'");
  AddedVocabulary::Token t;
  t.content = j["content"].get<std::string>();
  if (j.contains("id")) {
    if (!j["id"].is_number_integer() || j["id"].get<int64_t>() < 0)
      fail(where + ": 'id' must be an integer >= 0");
    t.id = j["id"].get<int64_t>();
  }
  t.special = bool_field(j, "special", false, where);
  t.lstrip = bool_field(j, "lstrip", false, where);
  t.rstrip = bool_field(j, "rstrip", false, where);
  t.single_word = bool_field(j, "single_word", false, where);
  t.normalized = bool_field(j, "normalized", !t.special, where);
  return t;
}

// A special token as tokenizer_config.json / special_tokens_map.json write it: a string, or {"content": ...}.
std::optional<std::string> special_token_name(const json& j, const std::string& where) {
  if (j.is_null()) return std::nullopt;
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string())
    return j["content"].get<std::string>();
  fail(where + ": expected a token string or {\"content\": ...}, got " + j.dump());
}

void upsert_added_token(Gpt2BpeSpec& spec, AddedVocabulary::Token token) {
  for (auto& t : spec.added_tokens) {
    if (t.id == token.id) {
      t = std::move(token);
      return;
    }
  }
  spec.added_tokens.push_back(std::move(token));
}

int64_t next_free_id(const Gpt2BpeSpec& spec) {
  int64_t next = 0;
  for (const auto& [token, id] : spec.vocab) next = std::max(next, id + 1);
  for (const auto& t : spec.added_tokens) next = std::max(next, t.id + 1);
  return next;
}

// What transformers' GPT2Tokenizer takes from the folder beside the vocabulary: special tokens (added as
// special added tokens, given a new id when the vocabulary lacks them), added_tokens_decoder, and the
// clean-up flag. transformers 5 ignores clean_up_tokenization_spaces for BPE unless the long override says
// so.
void apply_tokenizer_config(const fs::path& dir, Gpt2BpeSpec& spec) {
  json config = json::object(), special_map = json::object();
  const fs::path config_path = dir / "tokenizer_config.json", map_path = dir / "special_tokens_map.json";
  if (fs::exists(config_path)) config = read_json_file(config_path);
  if (fs::exists(map_path)) special_map = read_json_file(map_path);
  if (!config.is_object()) fail(config_path.string() + ": expected a JSON object");
  if (!special_map.is_object()) fail(map_path.string() + ": expected a JSON object");

  if (config.contains("added_tokens_decoder")) {
    const auto& decoder = config["added_tokens_decoder"];
    if (!decoder.is_object()) fail(config_path.string() + ": added_tokens_decoder must be an object");
    for (const auto& [key, value] : decoder.items()) {
      const std::string where = config_path.string() + ": added_tokens_decoder[" + key + "]";
      AddedVocabulary::Token t = parse_added_token(value, where);
      try {
        size_t used = 0;
        t.id = std::stoll(key, &used);
        if (used != key.size() || t.id < 0) throw std::invalid_argument(key);
      } catch (const std::exception&) {
        fail(where + ": the key must be a token id");
      }
      upsert_added_token(spec, std::move(t));
    }
  }

  std::optional<std::string> names[4];
  const char* keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
  for (int i = 0; i < 4; ++i) {
    if (config.contains(keys[i]))
      names[i] = special_token_name(config[keys[i]], config_path.string() + ": " + keys[i]);
    else if (special_map.contains(keys[i]))
      names[i] = special_token_name(special_map[keys[i]], map_path.string() + ": " + keys[i]);
    else if (i < 3)
      names[i] = kGpt2EndOfText;
  }
  for (const auto& name : names) {
    if (!name) continue;
    auto existing = std::find_if(spec.added_tokens.begin(), spec.added_tokens.end(),
                                 [&](const AddedVocabulary::Token& t) { return t.content == *name; });
    if (existing != spec.added_tokens.end()) continue;
    AddedVocabulary::Token t;
    t.content = *name;
    t.special = true;
    t.normalized = false;
    auto in_vocab = spec.vocab.find(*name);
    t.id = in_vocab != spec.vocab.end() ? in_vocab->second : next_free_id(spec);
    spec.added_tokens.push_back(std::move(t));
  }
  spec.eos_token = names[1];
  spec.pad_token = names[3];
  const std::string where = config_path.string();
  spec.clean_up_tokenization_spaces =
      bool_field(config, "clean_up_tokenization_spaces", false, where) &&
      bool_field(config, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", false,
                 where);
}

std::string type_of(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

// The post-processor's "single" template: special tokens before and after the sequence.
void parse_post_processor(const json& pp, const std::string& file, Gpt2BpeSpec& spec) {
  if (pp.is_null() || type_of(pp) == "ByteLevel") return;
  if (type_of(pp) != "TemplateProcessing")
    fail(file + ": post_processor type '" + type_of(pp) +
         "' is not supported (ByteLevel or TemplateProcessing)");
  if (!pp.contains("single") || !pp["single"].is_array())
    fail(file + ": post_processor.single must be a list");
  bool seen_sequence = false;
  for (const auto& piece : pp["single"]) {
    if (piece.contains("Sequence")) {
      seen_sequence = true;
    } else if (piece.contains("SpecialToken") && piece["SpecialToken"].contains("id") &&
               piece["SpecialToken"]["id"].is_string()) {
      const std::string name = piece["SpecialToken"]["id"].get<std::string>();
      const auto& specials = pp.value("special_tokens", json::object());
      if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
        fail(file + ": post_processor names special token '" + name + "' but does not give its ids");
      for (const auto& id : specials[name]["ids"]) {
        if (!id.is_number_integer()) fail(file + ": post_processor ids of '" + name + "' must be integers");
        (seen_sequence ? spec.suffix_ids : spec.prefix_ids).push_back(id.get<int64_t>());
      }
    } else {
      fail(file + ": post_processor.single holds an entry Kestrel does not understand: " + piece.dump());
    }
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_gpt2_bpe_from_vocab_merges(const fs::path& dir) {
  const fs::path vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt";
  Gpt2BpeSpec spec;
  spec.vocab = parse_vocab(read_json_file(vocab_path), vocab_path.string());
  spec.merges = parse_merges_txt(merges_path);
  apply_tokenizer_config(dir, spec);
  return std::make_unique<Gpt2BpeTokenizer>(spec);
}

std::unique_ptr<Tokenizer> load_gpt2_bpe_from_tokenizer_json(const json& tj, const fs::path& path) {
  const std::string file = path.string();
  try {
    if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object())
      fail(file + ": no 'model' object; not a `tokenizers` tokenizer.json");
    const auto& model = tj["model"];
    if (type_of(model) != "BPE")
      fail(file + ": model.type is '" + type_of(model) + "', but the GPT-2 tokenizer needs 'BPE'");
    if (model.value("byte_fallback", false)) fail(file + ": model.byte_fallback is not supported");
    if (!model.value("continuing_subword_prefix", json("")).is_null() &&
        model.value("continuing_subword_prefix", json("")) != "")
      fail(file + ": model.continuing_subword_prefix is not supported by a byte-level BPE");
    if (!model.value("end_of_word_suffix", json("")).is_null() &&
        model.value("end_of_word_suffix", json("")) != "")
      fail(file + ": model.end_of_word_suffix is not supported by a byte-level BPE");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0.0)
      fail(file + ": model.dropout is set; BPE dropout (random tokenization) is not supported");

    Gpt2BpeSpec spec;
    spec.vocab = parse_vocab(model.value("vocab", json()), file + ": model.vocab");
    spec.merges = parse_merges_json(model.value("merges", json::array()), file);
    spec.model.unk_token = special_token_name(model.value("unk_token", json()), file + ": model.unk_token");
    spec.model.fuse_unk = bool_field(model, "fuse_unk", false, file + ": model");
    spec.model.ignore_merges = bool_field(model, "ignore_merges", false, file + ": model");

    if (tj.contains("normalizer") && !tj["normalizer"].is_null())
      fail(file + ": normalizer '" + type_of(tj["normalizer"]) + "' is not supported by the GPT-2 tokenizer");
    const auto& pre = tj.value("pre_tokenizer", json());
    if (type_of(pre) != "ByteLevel")
      fail(file + ": pre_tokenizer type '" + type_of(pre) +
           "' is not supported (the GPT-2 tokenizer needs ByteLevel)");
    spec.add_prefix_space = bool_field(pre, "add_prefix_space", false, file + ": pre_tokenizer");
    spec.use_regex = bool_field(pre, "use_regex", true, file + ": pre_tokenizer");
    if (type_of(tj.value("decoder", json())) != "ByteLevel")
      fail(file + ": decoder type '" + type_of(tj.value("decoder", json())) +
           "' is not supported (the GPT-2 tokenizer needs ByteLevel)");
    parse_post_processor(tj.value("post_processor", json()), file, spec);

    const auto& added = tj.value("added_tokens", json::array());
    if (!added.is_array()) fail(file + ": added_tokens must be a list");
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string where = file + ": added_tokens[" + std::to_string(i) + "]";
      AddedVocabulary::Token t = parse_added_token(added[i], where);
      if (t.id < 0) fail(where + ": missing 'id'");
      upsert_added_token(spec, std::move(t));
    }
    apply_tokenizer_config(path.parent_path(), spec);
    return std::make_unique<Gpt2BpeTokenizer>(spec);
  } catch (const nlohmann::json::exception& e) {
    fail(file + ": unexpected structure: " + e.what());
  }
}

}  // namespace kestrel
