#include "tokenizers/gpt2_bpe.h"

#include <algorithm>
#include <array>
#include <utility>

#include "core/error.h"
#include "tokenizers/byte_level.h"

namespace kestrel {

namespace {

std::optional<int64_t> id_of(const Gpt2BpeSpec& spec, const std::optional<std::string>& token) {
  if (!token) return std::nullopt;
  for (const auto& added : spec.added_tokens)
    if (added.content == *token) return added.id;
  if (auto it = spec.vocab.find(*token); it != spec.vocab.end()) return it->second;
  return std::nullopt;
}

// transformers' clean_up_tokenization: undoes the spaces a word-piece tokenizer puts before punctuation.
std::string clean_up_tokenization(std::string text) {
  static const std::array<std::pair<std::string_view, std::string_view>, 10> kRules = {{{" .", "."},
                                                                                        {" ?", "?"},
                                                                                        {" !", "!"},
                                                                                        {" ,", ","},
                                                                                        {" ' ", "'"},
                                                                                        {" n't", "n't"},
                                                                                        {" 'm", "'m"},
                                                                                        {" 's", "'s"},
                                                                                        {" 've", "'ve"},
                                                                                        {" 're", "'re"}}};
  // Each rule is a whole pass over the text, like Python's chained str.replace.
  for (const auto& [from, to] : kRules) {
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    for (size_t hit; (hit = text.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
      out.append(text, pos, hit - pos);
      out.append(to);
    }
    out.append(text, pos);
    text = std::move(out);
  }
  return text;
}

}  // namespace

Gpt2BpeTokenizer::Gpt2BpeTokenizer(const Gpt2BpeSpec& spec)
    : model_(spec.vocab, spec.merges, spec.model),
      added_(spec.added_tokens),
      add_prefix_space_(spec.add_prefix_space),
      use_regex_(spec.use_regex),
      clean_up_spaces_(spec.clean_up_tokenization_spaces),
      prefix_ids_(spec.prefix_ids),
      suffix_ids_(spec.suffix_ids),
      eos_id_(id_of(spec, spec.eos_token)),
      pad_id_(id_of(spec, spec.pad_token)) {
  int64_t max_id = -1;
  for (const auto& [token, id] : spec.vocab) max_id = std::max(max_id, id);
  for (const auto& added : spec.added_tokens) max_id = std::max(max_id, added.id);
  id_bytes_.resize(size_t(max_id + 1));
  id_special_.resize(size_t(max_id + 1));
  // Like the ByteLevel decoder of `tokenizers`: a token made only of byte-level characters stands for those
  // bytes; any other token stands for its own UTF-8 text. Added tokens take precedence over the vocabulary.
  const auto bytes_of = [](const std::string& token) {
    return byte_level::token_to_bytes(token).value_or(token);
  };
  for (const auto& [token, id] : spec.vocab) id_bytes_[size_t(id)] = bytes_of(token);
  for (const auto& added : spec.added_tokens) {
    id_bytes_[size_t(added.id)] = bytes_of(added.content);
    id_special_[size_t(added.id)] = added.special;
  }
}

void Gpt2BpeTokenizer::encode_text(std::string_view text, std::vector<int64_t>& ids) const {
  std::string prefixed;
  if (add_prefix_space_ && !text.starts_with(' ')) {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  if (!use_regex_) {
    model_.encode_word(text, ids);
    return;
  }
  std::vector<std::string_view> words;
  pretokenizer_.split(text, words);
  for (auto word : words) model_.encode_word(word, ids);
}

std::vector<int64_t> Gpt2BpeTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string sanitized;
  if (!utf8::is_valid(text)) {
    sanitized = utf8::to_valid_utf8(text);
    text = sanitized;
  }
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + prefix_ids_.size() + suffix_ids_.size());
  if (add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  for (const auto& piece : added_.split(text)) {
    if (piece.id >= 0)
      ids.push_back(piece.id);
    else
      encode_text(piece.text, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string Gpt2BpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int64_t id : ids) {
    // Like transformers: an id the tokenizer does not know decodes to nothing (models often pad their vocabulary
    // beyond the tokenizer's, so generation may produce such ids).
    if (id < 0 || id >= vocab_size()) continue;
    const auto& token = id_bytes_[size_t(id)];
    if (!token) continue;  // an unassigned id inside the range decodes to nothing, as in `tokenizers`
    if (skip_special_tokens && id_special_[size_t(id)]) continue;
    bytes += *token;
  }
  std::string text = utf8::to_valid_utf8(bytes);
  return clean_up_spaces_ ? clean_up_tokenization(std::move(text)) : text;
}

}  // namespace kestrel
