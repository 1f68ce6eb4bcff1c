#pragma once
// The BPE model of a byte-level tokenizer: a vocabulary, ranked merges, and the merge loop that turns one
// pre-tokenized word into token ids. Works on raw bytes; the byte-level spelling of the files is undone when
// the model is built.
#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kestrel {

// One merge rule as written in the files: `left` + `right` (byte-level spelling) becomes one token.
// `where` names its origin ("merges.txt line 12") for error messages.
struct BpeMergeRule {
  std::string left, right, where;
};

struct BpeModelOptions {
  std::optional<std::string> unk_token;  // byte-level spelling; bytes with no token are dropped when unset
  bool fuse_unk = false;                 // consecutive unknown bytes become one unk token
  bool ignore_merges = false;            // a word that is itself in the vocabulary skips the merges
};

class BpeModel {
 public:
  // `vocab` maps byte-level spellings to ids. Throws kestrel::Error naming the rule's `where` when a merge
  // names a token, or produces one, that the vocabulary lacks.
  BpeModel(const std::unordered_map<std::string, int64_t>& vocab, const std::vector<BpeMergeRule>& merges,
           const BpeModelOptions& options);

  // Appends the ids of one pre-tokenized word (raw bytes). Thread-safe; results are cached per word.
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;

 private:
  struct Symbol {
    int32_t id, prev, next;
  };
  struct MergeTarget {
    int32_t rank, merged_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  std::vector<int32_t> merge_word(std::string_view word) const;

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using WordMap = std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>>;

  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> bytes_to_id_;  // raw bytes -> id
  std::array<int32_t, 256> byte_id_;  // the single-byte tokens, -1 where the vocabulary has none
  std::unordered_map<uint64_t, MergeTarget> merges_;
  std::optional<int32_t> unk_id_;
  BpeModelOptions options_;

  mutable std::mutex cache_mutex_;
  mutable WordMap cache_;
};

}  // namespace kestrel
