#include "tokenizers/gpt2_pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>

#include "core/error.h"

namespace kestrel {

namespace {

// GPT-2's pattern as the `tokenizers` library runs it:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// `tokenizers` uses Oniguruma, whose \s is Unicode White_Space: the Z categories, \t..\r and U+0085 (NEL).
// PCRE2's \s leaves out NEL, so the class is spelled out to tokenize exactly as transformers does.
#define KESTREL_WS "\\t-\\r\\x{85}\\p{Z}"
constexpr const char* kPattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" KESTREL_WS
                                 "\\p{L}\\p{N}]+|[" KESTREL_WS "]+(?![^" KESTREL_WS "])|[" KESTREL_WS "]+";
#undef KESTREL_WS

}  // namespace

struct Gpt2PreTokenizer::Impl {
  pcre2_code* code = nullptr;
};

Gpt2PreTokenizer::Gpt2PreTokenizer() : impl_(new Impl) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof message);
    delete impl_;
    internal_error("GPT-2 pre-tokenizer regex does not compile at offset " + std::to_string(error_offset) +
                   ": " + reinterpret_cast<const char*>(message));
  }
  // JIT is an optimisation only: when PCRE2 was built without it, pcre2_match interprets the pattern instead.
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);
}

Gpt2PreTokenizer::~Gpt2PreTokenizer() {
  pcre2_code_free(impl_->code);
  delete impl_;
}

void Gpt2PreTokenizer::split(std::string_view text, std::vector<std::string_view>& words) const {
  if (text.empty()) return;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  if (!match) internal_error("out of memory creating PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  PCRE2_SIZE offset = 0;
  while (offset < text.size()) {
    // The text was validated (or sanitised) as UTF-8 by the caller, so PCRE2 need not check it on every call.
    const int rc = pcre2_match(impl_->code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match, nullptr);
    PCRE2_SIZE start = text.size(), end = text.size();
    if (rc > 0) {
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      start = ovector[0];
      end = ovector[1];
    } else if (rc != PCRE2_ERROR_NOMATCH) {
      pcre2_match_data_free(match);
      internal_error("GPT-2 pre-tokenizer regex failed with PCRE2 error " + std::to_string(rc));
    }
    // The pattern's alternatives cover every character, so a gap or an empty match cannot happen; keep any
    // such text as its own word rather than dropping it or looping forever.
    if (start > offset) words.push_back(text.substr(offset, start - offset));
    if (end <= start) {
      if (start < text.size()) words.push_back(text.substr(start));
      break;
    }
    words.push_back(text.substr(start, end - start));
    offset = end;
  }
  pcre2_match_data_free(match);
}

}  // namespace kestrel
