#include "generate/text_stream.h"

namespace kestrel {

namespace {
constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// Bytes in the UTF-8 sequence a lead byte starts (0 for a continuation byte).
size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 0;
}
}  // namespace

size_t stable_utf8_prefix(const std::string& text) {
  size_t end = text.size();
  // Drop an incomplete final character: find the last lead byte and check its sequence fits.
  size_t i = end;
  while (i > 0 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80 && end - i < 3) --i;
  if (i > 0) {
    const size_t need = sequence_length(static_cast<unsigned char>(text[i - 1]));
    if (need > 1 && end - (i - 1) < need) end = i - 1;
  }
  // Hold back trailing replacement characters: the next token may turn them into a real character.
  while (end >= 3 && text.compare(end - 3, 3, kReplacement) == 0) end -= 3;
  return end;
}

std::string TextStream::push(const std::vector<int64_t>& tokens) {
  ids_.insert(ids_.end(), tokens.begin(), tokens.end());
  const std::string text = decode_(ids_);
  const size_t stable = stable_utf8_prefix(text);
  if (stable <= released_) return {};
  std::string out = text.substr(released_, stable - released_);
  released_ = stable;
  return out;
}

std::string TextStream::finish() {
  const std::string text = decode_(ids_);
  if (text.size() <= released_) return {};
  std::string out = text.substr(released_);
  released_ = text.size();
  return out;
}

}  // namespace kestrel
