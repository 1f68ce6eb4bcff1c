#pragma once
// GPT-2's pre-tokenizer: the regex that cuts text into words before BPE runs on each word.
#include <string_view>
#include <vector>

namespace kestrel {

class Gpt2PreTokenizer {
 public:
  Gpt2PreTokenizer();  // compiles the pattern (JIT where PCRE2 has it); throws kestrel::Error if PCRE2
                       // refuses
  ~Gpt2PreTokenizer();
  Gpt2PreTokenizer(const Gpt2PreTokenizer&) = delete;
  Gpt2PreTokenizer& operator=(const Gpt2PreTokenizer&) = delete;

  // Appends the words of `text` (valid UTF-8) to `words`, as views into `text`. Together they cover `text`.
  // Safe to call from several threads at once.
  void split(std::string_view text, std::vector<std::string_view>& words) const;

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace kestrel
