#pragma once
// SentencePiece's `precompiled_charsmap` normalizer (the NFKC-like rules baked into a spiece.model, and the
// "Precompiled" normalizer of a tokenizer.json), applied exactly as Hugging Face `tokenizers` applies it.
//
// The blob is [u32 trie byte size][double-array trie of u32 units][NUL-terminated replacement strings]. The
// trie maps a UTF-8 byte string to the offset of its replacement. `tokenizers` walks the text one extended
// grapheme cluster at a time: a cluster shorter than 6 bytes whose *shortest* trie prefix matches is replaced
// whole; otherwise each code point is looked up on its own. (SentencePiece itself uses longest-prefix
// matching over the raw bytes; the two differ only on rare multi-code-point clusters, and we follow
// `tokenizers`, which is what transformers' T5 tokenizer runs.)
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kestrel {

class PrecompiledCharsmap {
 public:
  // `source` names the file in error messages. Throws kestrel::Error if the blob is malformed.
  PrecompiledCharsmap(std::string_view blob, std::string source);

  // Normalizes valid UTF-8 text. Throws kestrel::Error (naming the source) if the trie points outside itself.
  std::string normalize(std::string_view text) const;

 private:
  // Replacement for the shortest trie key that is a prefix of `chunk`, if any.
  std::optional<std::string_view> transform(std::string_view chunk) const;
  uint32_t unit(size_t pos) const;

  std::vector<uint32_t> trie_;
  std::string replacements_;
  std::string source_;
};

}  // namespace kestrel
