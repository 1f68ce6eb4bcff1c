#pragma once
// Incremental detokenisation for streaming: after each new token the whole generated id list is decoded again
// (tokenizers only decode correctly with context: byte-level BPE splits UTF-8 characters across tokens,
// SentencePiece drops a leading space) and only the new, stable part of the text is released. A trailing
// partial UTF-8 character (decoded as U+FFFD or left incomplete) is held back until the next token completes
// it.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kestrel {

class TextStream {
 public:
  using Decode = std::function<std::string(const std::vector<int64_t>&)>;
  explicit TextStream(Decode decode) : decode_(std::move(decode)) {}

  // Adds tokens; returns the text that became stable (possibly empty).
  std::string push(const std::vector<int64_t>& tokens);
  // Everything not yet released, including a held-back tail (call once at the end).
  std::string finish();
  const std::vector<int64_t>& tokens() const { return ids_; }

 private:
  Decode decode_;
  std::vector<int64_t> ids_;
  size_t released_ = 0;  // bytes of the decoded text already handed out
};

// Length of the longest prefix of `text` that ends on a complete UTF-8 character and not in a U+FFFD
// replacement character (what a decoder emits for a byte sequence cut short).
size_t stable_utf8_prefix(const std::string& text);

}  // namespace kestrel
