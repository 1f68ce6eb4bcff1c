#include "tokenizers/sentencepiece_tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizers/sentencepiece_text.h"

namespace kestrel {

namespace {

// Builds a new string rather than editing in place (in-place replace trips GCC 12's -Wrestrict false
// positive).
void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t start = 0;
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, start)) {
    out.append(s, start, at - start).append(to);
    start = at + from.size();
  }
  out.append(s, start);
  s = std::move(out);
}

// transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order.
void clean_up_tokenization(std::string& s) {
  static const std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) replace_all(s, from, to);
}

// Words of `s` split on Unicode whitespace (which is dropped), with their byte offsets.
std::vector<std::pair<size_t, std::string_view>> split_on_whitespace(std::string_view s) {
  std::vector<std::pair<size_t, std::string_view>> words;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t n = sp::utf8_len(static_cast<unsigned char>(s[i]));
    if (sp::is_unicode_whitespace(sp::codepoint_at(s, i))) {
      if (i > start) words.emplace_back(start, s.substr(start, i - start));
      start = i + n;
    }
    i += n;
  }
  if (start < s.size()) words.emplace_back(start, s.substr(start));
  return words;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceSpec spec)
    : spec_(std::move(spec)),
      model_(spec_.pieces, spec_.unk_id, spec_.byte_fallback, spec_.source),
      added_(spec_.added_tokens) {
  vocab_size_ = model_.size();
  for (const auto& t : spec_.added_tokens) {
    if (t.id < 0) fail(spec_.source + ": added token '" + t.content + "' has a negative id");
    vocab_size_ = std::max(vocab_size_, t.id + 1);
  }
  added_by_id_.assign(size_t(vocab_size_), nullptr);
  for (const auto& t : spec_.added_tokens) {
    added_by_id_[size_t(t.id)] = &t.content;
    if (t.special) special_contents_.insert(t.content);
  }
  for (int64_t id : spec_.prefix_ids)
    if (id < 0 || id >= vocab_size_)
      fail(spec_.source + ": special token id " + std::to_string(id) + " is outside the vocabulary");
  for (int64_t id : spec_.suffix_ids)
    if (id < 0 || id >= vocab_size_)
      fail(spec_.source + ": special token id " + std::to_string(id) + " is outside the vocabulary");
}

const std::string* SentencePieceTokenizer::id_to_piece(int64_t id) const {
  if (id < 0 || id >= vocab_size_) return nullptr;
  if (const std::string* added = added_by_id_[size_t(id)]) return added;
  if (id >= model_.size()) return nullptr;
  return &model_.piece(id);
}

std::vector<int64_t> SentencePieceTokenizer::encode(std::string_view raw, bool add_special_tokens) const {
  // Ill-formed UTF-8 is read as Python's bytes.decode(errors="replace") would (U+FFFD), as for GPT-2.
  std::string repaired;
  if (!utf8::is_valid(raw)) repaired = utf8::to_valid_utf8(raw);
  const std::string_view text = repaired.empty() ? raw : std::string_view(repaired);
  std::vector<int64_t> ids;
  if (add_special_tokens) ids = spec_.prefix_ids;
  for (const auto& piece : added_.split(text)) {
    if (piece.id >= 0)
      ids.push_back(piece.id);
    else
      encode_span(piece.text, piece.text.data() == text.data(), ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), spec_.suffix_ids.begin(), spec_.suffix_ids.end());
  return ids;
}

void SentencePieceTokenizer::encode_span(std::string_view span, bool at_text_start,
                                         std::vector<int64_t>& out) const {
  std::string normalized(span);
  for (const auto& step : spec_.normalizers) normalized = step(normalized);

  std::vector<std::pair<size_t, std::string_view>> words;
  if (spec_.whitespace_split)
    words = split_on_whitespace(normalized);
  else if (!normalized.empty())
    words.emplace_back(0, normalized);

  for (const auto& [offset, word] : words) {
    if (!spec_.metaspace) {
      model_.encode(word, out);
      continue;
    }
    const auto& ms = *spec_.metaspace;
    std::string w(word);
    replace_all(w, " ", ms.replacement);
    // "first" prepends only to the pre-token at the very start of the input, as `tokenizers` checks its
    // offset.
    const bool prepend = ms.prepend == SentencePieceSpec::Prepend::Always ||
                         (ms.prepend == SentencePieceSpec::Prepend::First && at_text_start && offset == 0);
    if (prepend && !w.starts_with(ms.replacement)) w = ms.replacement + w;
    if (!ms.split) {
      model_.encode(w, out);
      continue;
    }
    // Split before each replacement character, which stays with the text after it ("▁a▁b" -> "▁a", "▁b").
    size_t start = 0;
    for (size_t at = w.find(ms.replacement, 1); at != std::string::npos;
         at = w.find(ms.replacement, at + 1)) {
      model_.encode(std::string_view(w).substr(start, at - start), out);
      start = at;
    }
    model_.encode(std::string_view(w).substr(start), out);
  }
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<const std::string*> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    // Like transformers: an id the tokenizer does not know decodes to nothing (T5 checkpoints pad vocab_size to
    // 32128 while the tokenizer has 32100 ids, so generation may produce such ids).
    const std::string* t = id_to_piece(id);
    if (!t || (skip_special_tokens && special_contents_.count(*t))) continue;
    tokens.push_back(t);
  }
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!spec_.decoder) {
      if (i) text += ' ';
      text += *tokens[i];
      continue;
    }
    // The Metaspace decoder: '▁' becomes a space, except in the first token when encoding prepends one.
    std::string t = *tokens[i];
    const bool drop = i == 0 && spec_.decoder->prepend != SentencePieceSpec::Prepend::Never;
    replace_all(t, spec_.decoder->replacement, drop ? "" : " ");
    text += t;
  }
  if (spec_.clean_up_tokenization_spaces) clean_up_tokenization(text);
  return text;
}

}  // namespace kestrel
