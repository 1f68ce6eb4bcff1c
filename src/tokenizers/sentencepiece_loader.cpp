// Reads a T5 folder's tokenizer files into a SentencePieceSpec.
//
// transformers 5.x builds a T5 tokenizer (tokenizer_class T5Tokenizer / T5TokenizerFast, or none) the same
// way whatever the files: the vocabulary (tokenizer.json's Unigram vocab, else spiece.model's pieces followed
// by the <extra_id_N> sentinels in reverse), the precompiled charsmap as the only normaliser, then a fixed
// pipeline — WhitespaceSplit + Metaspace(prepend always), unk id 2, no byte fallback, </s> appended,
// Metaspace decoder. It ignores tokenizer.json's other components, so we do too. For any other
// tokenizer_class the tokenizer.json is taken as written, with the components Unigram tokenizers use;
// anything else is refused with a clear error.
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "tokenizers/precompiled_charsmap.h"
#include "tokenizers/sentencepiece_text.h"
#include "tokenizers/sentencepiece_tokenizer.h"
#include "tokenizers/spiece_model.h"
#include "tokenizers/tokenizer_files.h"

namespace kestrel {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string base64_decode(std::string_view in, const std::string& where) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const int v = value(c);
    if (v < 0) fail(where + ": precompiled_charsmap is not valid base64");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xFF);
    }
  }
  return out;
}

// A token given as "</s>" or as {"content": "</s>", ...} (transformers writes both).
std::optional<std::string> token_string(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}

// Typed field access with errors that name the file and the field.
template <typename T>
T get_field(const json& obj, const char* key, const std::string& where, T fallback) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return fallback;
  try {
    return obj[key].get<T>();
  } catch (const json::exception&) {
    fail(where + ": field '" + key + "' has the wrong type");
  }
}

std::vector<UnigramModel::Piece> unigram_vocab(const json& model, const std::string& where) {
  const json& vocab = model.contains("vocab") ? model["vocab"] : json();
  if (!vocab.is_array()) fail(where + ": model.vocab must be a list of [piece, score] pairs");
  std::vector<UnigramModel::Piece> pieces;
  pieces.reserve(vocab.size());
  for (size_t i = 0; i < vocab.size(); ++i) {
    const json& e = vocab[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
      fail(where + ": model.vocab[" + std::to_string(i) + "] is not a [piece, score] pair");
    pieces.push_back({e[0].get<std::string>(), e[1].get<double>()});
  }
  return pieces;
}

// The Precompiled charsmap of a normalizer (alone or inside a Sequence), as transformers' T5Tokenizer finds
// it.
std::optional<std::string> find_charsmap(const json& normalizer, const std::string& where) {
  if (!normalizer.is_object()) return std::nullopt;
  const std::string type = get_field<std::string>(normalizer, "type", where, "");
  if (type == "Precompiled") {
    const json& c = normalizer.contains("precompiled_charsmap") ? normalizer["precompiled_charsmap"] : json();
    if (c.is_null()) return std::nullopt;
    if (!c.is_string()) fail(where + ": normalizer.precompiled_charsmap must be a base64 string");
    return base64_decode(c.get<std::string>(), where);
  }
  if (type == "Sequence" && normalizer.contains("normalizers") && normalizer["normalizers"].is_array())
    for (const json& n : normalizer["normalizers"])
      if (auto c = find_charsmap(n, where)) return c;
  return std::nullopt;
}

void add_charsmap(SentencePieceSpec& spec, const std::string& blob, const std::string& where) {
  if (blob.empty()) return;
  auto charsmap = std::make_shared<PrecompiledCharsmap>(blob, where);
  spec.normalizers.push_back([charsmap](std::string_view s) { return charsmap->normalize(s); });
}

// Looks a special token's string up in the vocabulary (the last piece with that text, as `tokenizers` does).
int64_t piece_id(const std::vector<UnigramModel::Piece>& pieces, const std::string& text,
                 const std::string& where, const char* what) {
  for (size_t i = pieces.size(); i-- > 0;)
    if (pieces[i].text == text) return int64_t(i);
  fail(where + ": " + what + " '" + text + "' is not in the vocabulary (adding new tokens is not supported)");
}

struct ConfigToken {
  std::string content;
  std::optional<int64_t> id;
  bool special = true, lstrip = false, rstrip = false, single_word = false;
};

// Special and added tokens tokenizer_config.json declares.
std::vector<ConfigToken> config_tokens(const json& cfg, const std::string& where) {
  std::vector<ConfigToken> out;
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    if (!cfg.contains(key)) continue;
    const json& list = cfg[key];
    if (list.is_array()) {
      for (const json& v : list)
        if (auto s = token_string(v)) out.push_back({*s, std::nullopt});
    } else if (list.is_object()) {
      for (const auto& [name, v] : list.items())
        if (auto s = token_string(v)) out.push_back({*s, std::nullopt});
    }
  }
  if (cfg.contains("added_tokens_decoder") && cfg["added_tokens_decoder"].is_object()) {
    for (const auto& [key, v] : cfg["added_tokens_decoder"].items()) {
      const auto content = token_string(v);
      int64_t id;
      try {
        id = std::stoll(key);
      } catch (const std::exception&) {
        fail(where + ": added_tokens_decoder key '" + key + "' is not a token id");
      }
      if (!content) fail(where + ": added_tokens_decoder[" + key + "] has no content");
      ConfigToken t{*content,
                    id,
                    get_field<bool>(v, "special", where, false),
                    get_field<bool>(v, "lstrip", where, false),
                    get_field<bool>(v, "rstrip", where, false),
                    get_field<bool>(v, "single_word", where, false)};
      if (!t.special && get_field<bool>(v, "normalized", where, false))
        fail(where + ": added token '" + *content +
             "' is matched after normalisation, which is not supported");
      out.push_back(t);
    }
  }
  return out;
}

// transformers 5.x's T5Tokenizer pipeline over the given vocabulary and charsmap.
SentencePieceSpec t5_spec(std::vector<UnigramModel::Piece> pieces, const std::string& charsmap,
                          const json& cfg, const std::string& source, const std::string& cfg_where) {
  SentencePieceSpec spec;
  spec.source = source;
  spec.pieces = std::move(pieces);
  spec.unk_id = 2;  // T5Tokenizer hard-codes it
  add_charsmap(spec, charsmap, source);
  spec.whitespace_split = true;
  spec.metaspace = SentencePieceSpec::Metaspace{};
  spec.decoder = SentencePieceSpec::Metaspace{};
  spec.clean_up_tokenization_spaces = get_field<bool>(cfg, "clean_up_tokenization_spaces", cfg_where, false);

  std::vector<ConfigToken> specials;
  const auto named = [&](const char* key, const char* fallback) {
    std::string s = fallback;
    if (cfg.contains(key)) {
      if (auto t = token_string(cfg[key])) s = *t;
    }
    specials.push_back({s, std::nullopt});
    return s;
  };
  const std::string eos = named("eos_token", "</s>");
  const std::string pad = named("pad_token", "<pad>");
  named("unk_token", "<unk>");
  const int64_t extra_ids = get_field<int64_t>(cfg, "extra_ids", cfg_where, 100);
  for (int64_t i = 0; i < extra_ids; ++i)
    specials.push_back({"<extra_id_" + std::to_string(i) + ">", std::nullopt});
  for (auto& t : config_tokens(cfg, cfg_where)) specials.push_back(t);

  std::set<std::string> seen;
  for (const ConfigToken& t : specials) {
    if (!seen.insert(t.content).second) continue;
    const int64_t id = t.id ? *t.id : piece_id(spec.pieces, t.content, source, "special token");
    spec.added_tokens.push_back(
        {t.content, id, t.special, t.lstrip, t.rstrip, t.single_word, /*normalized=*/false});
  }
  spec.eos_id = piece_id(spec.pieces, eos, source, "eos_token");
  spec.pad_id = piece_id(spec.pieces, pad, source, "pad_token");
  spec.suffix_ids = {*spec.eos_id};
  return spec;
}

SentencePieceSpec::Metaspace parse_metaspace(const json& j, const std::string& where) {
  SentencePieceSpec::Metaspace ms;
  ms.replacement = get_field<std::string>(j, "replacement", where, ms.replacement);
  if (!utf8::is_valid(ms.replacement) || ms.replacement.empty() ||
      sp::utf8_len(static_cast<unsigned char>(ms.replacement[0])) != ms.replacement.size())
    fail(where + ": Metaspace replacement must be one character");
  std::string scheme = get_field<std::string>(j, "prepend_scheme", where, "");
  if (scheme.empty()) scheme = get_field<bool>(j, "add_prefix_space", where, true) ? "always" : "never";
  if (scheme == "always")
    ms.prepend = SentencePieceSpec::Prepend::Always;
  else if (scheme == "first")
    ms.prepend = SentencePieceSpec::Prepend::First;
  else if (scheme == "never")
    ms.prepend = SentencePieceSpec::Prepend::Never;
  else
    fail(where + ": unknown Metaspace prepend_scheme '" + scheme + "'");
  ms.split = get_field<bool>(j, "split", where, true);
  return ms;
}

void add_normalizer(SentencePieceSpec& spec, const json& n, const std::string& where) {
  if (n.is_null()) return;
  const std::string type = get_field<std::string>(n, "type", where, "");
  if (type == "Sequence") {
    if (!n.contains("normalizers") || !n["normalizers"].is_array())
      fail(where + ": normalizer Sequence has no list");
    for (const json& m : n["normalizers"]) add_normalizer(spec, m, where);
  } else if (type == "Precompiled") {
    if (auto blob = find_charsmap(n, where)) add_charsmap(spec, *blob, where);
  } else if (type == "Replace") {
    const json& pattern = n.contains("pattern") ? n["pattern"] : json();
    if (!pattern.is_object() || !pattern.contains("String") || !pattern["String"].is_string())
      fail(where + ": normalizer Replace with a regex pattern is not supported (only a plain string)");
    const std::string from = pattern["String"].get<std::string>();
    const std::string to = get_field<std::string>(n, "content", where, "");
    if (from.empty()) fail(where + ": normalizer Replace has an empty pattern");
    spec.normalizers.push_back([from, to](std::string_view s) {
      std::string out;
      size_t start = 0;
      for (size_t at = s.find(from); at != std::string_view::npos; at = s.find(from, start)) {
        out.append(s.substr(start, at - start)).append(to);
        start = at + from.size();
      }
      return out.append(s.substr(start));
    });
  } else if (type == "Strip") {
    const bool left = get_field<bool>(n, "strip_left", where, true),
               right = get_field<bool>(n, "strip_right", where, true);
    spec.normalizers.push_back([left, right](std::string_view s) {
      size_t b = 0, e = s.size();
      while (left && b < e && sp::is_unicode_whitespace(sp::codepoint_at(s, b)))
        b += sp::utf8_len(static_cast<unsigned char>(s[b]));
      while (right && e > b) {
        size_t k = e - 1;
        while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        if (!sp::is_unicode_whitespace(sp::codepoint_at(s, k))) break;
        e = k;
      }
      return std::string(s.substr(b, e - b));
    });
  } else {
    fail(where + ": normalizer '" + type +
         "' is not supported (supported: Precompiled, Replace, Strip, Sequence)");
  }
}

void set_pre_tokenizer(SentencePieceSpec& spec, const json& p, const std::string& where) {
  if (p.is_null()) return;
  const std::string type = get_field<std::string>(p, "type", where, "");
  if (type == "Sequence") {
    if (!p.contains("pretokenizers") || !p["pretokenizers"].is_array())
      fail(where + ": pre_tokenizer Sequence has no list");
    for (const json& q : p["pretokenizers"]) set_pre_tokenizer(spec, q, where);
  } else if (type == "WhitespaceSplit") {
    if (spec.metaspace) fail(where + ": WhitespaceSplit after Metaspace is not supported");
    spec.whitespace_split = true;
  } else if (type == "Metaspace") {
    if (spec.metaspace) fail(where + ": two Metaspace pre-tokenizers are not supported");
    spec.metaspace = parse_metaspace(p, where);
  } else {
    fail(where + ": pre_tokenizer '" + type +
         "' is not supported (supported: WhitespaceSplit, Metaspace, Sequence)");
  }
}

void set_post_processor(SentencePieceSpec& spec, const json& p, const std::string& where) {
  if (p.is_null()) return;
  if (get_field<std::string>(p, "type", where, "") != "TemplateProcessing")
    fail(where + ": post_processor '" + get_field<std::string>(p, "type", where, "") +
         "' is not supported (only TemplateProcessing)");
  const json& single = p.contains("single") ? p["single"] : json();
  const json& specials = p.contains("special_tokens") ? p["special_tokens"] : json::object();
  if (!single.is_array()) fail(where + ": post_processor.single must be a list");
  bool seen_sequence = false;
  for (const json& item : single) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    const std::string name =
        item.contains("SpecialToken") ? get_field<std::string>(item["SpecialToken"], "id", where, "") : "";
    if (name.empty() || !specials.contains(name) || !specials[name].contains("ids") ||
        !specials[name]["ids"].is_array())
      fail(where + ": post_processor template item " + item.dump() + " is not understood");
    auto& dst = seen_sequence ? spec.suffix_ids : spec.prefix_ids;
    for (const json& id : specials[name]["ids"]) {
      if (!id.is_number_integer())
        fail(where + ": post_processor special token '" + name + "' has a non-integer id");
      dst.push_back(id.get<int64_t>());
    }
  }
}

// A tokenizer.json taken as written (a tokenizer_class other than T5's).
SentencePieceSpec generic_spec(const json& tj, const json& cfg, const std::string& where,
                               const std::string& cfg_where) {
  SentencePieceSpec spec;
  spec.source = where;
  const json& model = tj["model"];
  spec.pieces = unigram_vocab(model, where);
  if (!model.contains("unk_id") || !model["unk_id"].is_number_integer())
    fail(where + ": model.unk_id must be set (a Unigram model without <unk> is not supported)");
  spec.unk_id = model["unk_id"].get<int64_t>();
  spec.byte_fallback = get_field<bool>(model, "byte_fallback", where, false);
  add_normalizer(spec, tj.value("normalizer", json()), where);
  set_pre_tokenizer(spec, tj.value("pre_tokenizer", json()), where);
  const json decoder = tj.value("decoder", json());
  if (!decoder.is_null()) {
    if (get_field<std::string>(decoder, "type", where, "") != "Metaspace")
      fail(where + ": decoder '" + get_field<std::string>(decoder, "type", where, "") +
           "' is not supported (only Metaspace)");
    spec.decoder = parse_metaspace(decoder, where);
  }
  set_post_processor(spec, tj.value("post_processor", json()), where);
  if (tj.contains("added_tokens") && tj["added_tokens"].is_array()) {
    for (const json& t : tj["added_tokens"]) {
      const std::string content = get_field<std::string>(t, "content", where, "");
      const bool special = get_field<bool>(t, "special", where, false);
      if (!special && get_field<bool>(t, "normalized", where, true))
        fail(where + ": added token '" + content +
             "' is matched after normalisation, which is not supported");
      spec.added_tokens.push_back({content, get_field<int64_t>(t, "id", where, -1), special,
                                   get_field<bool>(t, "lstrip", where, false),
                                   get_field<bool>(t, "rstrip", where, false),
                                   get_field<bool>(t, "single_word", where, false), /*normalized=*/false});
    }
  }
  spec.clean_up_tokenization_spaces = get_field<bool>(cfg, "clean_up_tokenization_spaces", cfg_where, false);
  const auto id_of = [&](const char* key) -> std::optional<int64_t> {
    if (!cfg.contains(key)) return std::nullopt;
    const auto s = token_string(cfg[key]);
    if (!s) return std::nullopt;
    for (const auto& t : spec.added_tokens)
      if (t.content == *s) return t.id;
    return piece_id(spec.pieces, *s, where, key);
  };
  spec.eos_id = id_of("eos_token");
  spec.pad_id = id_of("pad_token");
  return spec;
}

}  // namespace

SentencePieceSpec load_sentencepiece_spec(const fs::path& dir) {
  const fs::path config_path = dir / "tokenizer_config.json", json_path = dir / "tokenizer.json",
                 spm_path = dir / "spiece.model";
  const json cfg = fs::exists(config_path) ? read_json_file(config_path) : json::object();
  const std::string cfg_where = config_path.string();
  const std::string cls = get_field<std::string>(cfg, "tokenizer_class", cfg_where, "");
  const bool t5 = cls.empty() || cls == "T5Tokenizer" || cls == "T5TokenizerFast";

  if (fs::exists(json_path)) {
    const std::string where = json_path.string();
    const json tj = read_json_file(json_path);
    const json model = tj.is_object() ? tj.value("model", json()) : json();
    const std::string type = get_field<std::string>(model, "type", where, "");
    if (type != "Unigram")
      fail(where + ": model type '" + type +
           "' is not supported by the SentencePiece tokenizer (expected Unigram)");
    if (!t5) return generic_spec(tj, cfg, where, cfg_where);
    const std::string charsmap = find_charsmap(tj.value("normalizer", json()), where).value_or("");
    return t5_spec(unigram_vocab(model, where), charsmap, cfg, where, cfg_where);
  }
  if (fs::exists(spm_path)) {
    if (!t5)
      fail(cfg_where + ": tokenizer_class '" + cls + "' with only spiece.model is not supported (T5 only)");
    SpieceModel m = read_spiece_model(spm_path);
    // transformers' T5Converter appends the sentinels after the pieces, <extra_id_0> last.
    const int64_t extra_ids = get_field<int64_t>(cfg, "extra_ids", cfg_where, 100);
    if (extra_ids < 0 || extra_ids > 100000)
      fail(cfg_where + ": extra_ids " + std::to_string(extra_ids) + " is out of range");
    for (int64_t i = extra_ids - 1; i >= 0; --i)
      m.pieces.push_back({"<extra_id_" + std::to_string(i) + ">", 0.0});
    return t5_spec(std::move(m.pieces), m.precompiled_charsmap, cfg, spm_path.string(), cfg_where);
  }
  fail(dir.string() + ": no tokenizer.json or spiece.model for the SentencePiece tokenizer");
}

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const fs::path& dir) {
  return std::make_unique<SentencePieceTokenizer>(load_sentencepiece_spec(dir));
}

}  // namespace kestrel
