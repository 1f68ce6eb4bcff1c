#include "tokenizers/bpe_model.h"

#include <limits>
#include <queue>

#include "core/error.h"
#include "tokenizers/byte_level.h"

namespace kestrel {

namespace {

// Words longer than this are rare (URLs, base64, long runs of one character) and not worth keeping.
constexpr size_t kMaxCachedWordBytes = 256;
// The cache is dropped wholesale when it grows past this many words: simple, and it bounds memory on huge
// inputs.
constexpr size_t kMaxCachedWords = 1 << 17;

}  // namespace

BpeModel::BpeModel(const std::unordered_map<std::string, int64_t>& vocab,
                   const std::vector<BpeMergeRule>& merges, const BpeModelOptions& options)
    : options_(options) {
  for (const auto& [token, id] : vocab) {
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      fail("token id " + std::to_string(id) + " out of range");
    // Tokens outside the byte-level alphabet (e.g. "<|endoftext|>" written plainly is inside it; a stray
    // non-byte-level entry is not) can never come out of the merges, so the model does not need them.
    if (auto bytes = byte_level::token_to_bytes(token)) bytes_to_id_.emplace(std::move(*bytes), int32_t(id));
  }
  byte_id_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    auto it = bytes_to_id_.find(std::string(1, char(b)));
    if (it != bytes_to_id_.end()) byte_id_[size_t(b)] = it->second;
  }
  const auto id_of = [&](const std::string& token, const BpeMergeRule& rule) {
    auto it = vocab.find(token);
    if (it == vocab.end())
      fail(rule.where + ": merge names token '" + token + "', which is not in the vocabulary");
    return int32_t(it->second);
  };
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& rule = merges[rank];
    const int32_t left = id_of(rule.left, rule), right = id_of(rule.right, rule);
    const int32_t merged = id_of(rule.left + rule.right, rule);
    // A repeated rule keeps its last rank, as the `tokenizers` library does.
    merges_.insert_or_assign(pair_key(left, right), MergeTarget{int32_t(rank), merged});
  }
  if (options_.unk_token) {
    auto it = vocab.find(*options_.unk_token);
    if (it == vocab.end()) fail("unk_token '" + *options_.unk_token + "' is not in the vocabulary");
    unk_id_ = int32_t(it->second);
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  auto ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kMaxCachedWords) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }
}

// The merge loop of the `tokenizers` library (Word::merge_all): start from one symbol per byte, then
// repeatedly apply the lowest-ranked merge available, leftmost first among equal ranks, until none applies. A
// heap of candidate merges keeps this O(n log n), which matters for very long words.
std::vector<int32_t> BpeModel::merge_word(std::string_view word) const {
  if (options_.ignore_merges) {
    if (auto it = bytes_to_id_.find(word); it != bytes_to_id_.end()) return {it->second};
  }
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto push = [&](int32_t id) {
    const int32_t index = int32_t(symbols.size());
    symbols.push_back({id, index - 1, -1});
    if (index > 0) symbols[size_t(index) - 1].next = index;
  };
  bool pending_unk = false;
  for (char byte : word) {
    const int32_t id = byte_id_[uint8_t(byte)];
    if (id >= 0) {
      if (pending_unk) push(*unk_id_);
      pending_unk = false;
      push(id);
    } else if (unk_id_) {
      if (pending_unk && !options_.fuse_unk) push(*unk_id_);
      pending_unk = true;
    }  // else: a byte with no token and no unk token is dropped, as in `tokenizers`
  }
  if (pending_unk) push(*unk_id_);

  struct Candidate {
    int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int32_t pos) {
    const int32_t next = symbols[size_t(pos)].next;
    if (next < 0) return;
    auto it = merges_.find(pair_key(symbols[size_t(pos)].id, symbols[size_t(next)].id));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < int32_t(symbols.size()); ++i) consider(i);

  constexpr int32_t kRemoved = -2;
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[size_t(top.pos)];
    if (left.id == kRemoved || left.next < 0) continue;
    // The candidate is stale if either side has merged with something else since it was queued.
    const Symbol& right = symbols[size_t(left.next)];
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;

    const int32_t removed = left.next;
    left.id = top.merged_id;
    left.next = right.next;
    if (left.next >= 0) symbols[size_t(left.next)].prev = top.pos;
    symbols[size_t(removed)].id = kRemoved;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }

  std::vector<int32_t> ids;
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[size_t(i)].next)
    ids.push_back(symbols[size_t(i)].id);
  return ids;
}

}  // namespace kestrel
