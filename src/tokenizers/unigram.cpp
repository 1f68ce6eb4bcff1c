#include "tokenizers/unigram.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "core/error.h"
#include "tokenizers/sentencepiece_text.h"

namespace kestrel {

namespace {
constexpr double kUnkPenalty = 10.0;  // `tokenizers`' K_UNK_PENALTY, as in SentencePiece

std::string byte_piece(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}
}  // namespace

UnigramModel::UnigramModel(std::vector<Piece> pieces, int64_t unk_id, bool byte_fallback,
                           const std::string& source)
    : pieces_(std::move(pieces)), unk_id_(unk_id), byte_fallback_(byte_fallback) {
  if (pieces_.empty()) fail(source + ": the Unigram vocabulary is empty");
  if (unk_id_ < 0 || unk_id_ >= size())
    fail(source + ": unk_id " + std::to_string(unk_id_) + " is outside the vocabulary of " +
         std::to_string(size()) + " pieces");
  trie_.emplace_back();
  min_score_ = std::numeric_limits<double>::infinity();
  for (int64_t id = 0; id < size(); ++id) {
    const Piece& p = pieces_[size_t(id)];
    if (!utf8::is_valid(p.text))
      fail(source + ": vocabulary piece " + std::to_string(id) + " is not valid UTF-8");
    ids_[p.text] = id;
    min_score_ = std::min(min_score_, p.score);
    if (!p.text.empty()) insert_into_trie(p.text);
  }
}

void UnigramModel::insert_into_trie(const std::string& text) {
  uint32_t node = 0;
  for (unsigned char c : text) {
    uint32_t next = child(node, c);
    if (next == 0) {
      next = uint32_t(trie_.size());
      trie_.emplace_back();
      auto& ch = trie_[node].children;
      ch.insert(std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, 0u)), {c, next});
    }
    node = next;
  }
  // A duplicate piece maps to the last id in the token->id table; the trie must agree so scores match.
  trie_[node].piece = ids_.at(text);
}

uint32_t UnigramModel::child(uint32_t node, unsigned char c) const {
  const auto& ch = trie_[node].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, 0u));
  return (it != ch.end() && it->first == c) ? it->second : 0;
}

int64_t UnigramModel::find(std::string_view text) const {
  auto it = ids_.find(std::string(text));
  return it == ids_.end() ? -1 : it->second;
}

int UnigramModel::byte_value(int64_t id) const {
  if (!byte_fallback_ || id < 0 || id >= size()) return -1;
  const std::string& t = pieces_[size_t(id)].text;
  unsigned v;
  char tail;
  if (t.size() != 6 || std::sscanf(t.c_str(), "<0x%2X%c", &v, &tail) != 2 || tail != '>') return -1;
  return byte_piece(static_cast<unsigned char>(v)) == t ? int(v) : -1;
}

void UnigramModel::encode(std::string_view text, std::vector<int64_t>& out) const {
  if (text.empty()) return;
  // best[i]: the best segmentation of text[0, i): its score, where its last piece starts, and that piece's
  // id.
  struct Best {
    double score = 0;
    int64_t start = -1;  // -1: not reached yet
    int64_t id = 0;
  };
  const size_t n = text.size();
  std::vector<Best> best(n + 1);
  const double unk_score = min_score_ - kUnkPenalty;
  const auto relax = [&](size_t from, size_t to, double score, int64_t id) {
    const double candidate = best[from].score + score;
    if (best[to].start < 0 || candidate > best[to].score) best[to] = {candidate, int64_t(from), id};
  };
  for (size_t pos = 0; pos < n;) {
    const size_t char_len = sp::utf8_len(static_cast<unsigned char>(text[pos]));
    bool covers_char = false;
    uint32_t node = 0;
    for (size_t end = pos; end < n;) {
      node = child(node, static_cast<unsigned char>(text[end]));
      if (node == 0) break;
      ++end;
      if (const int64_t id = trie_[node].piece; id >= 0) {
        relax(pos, end, pieces_[size_t(id)].score, id);
        if (end - pos == char_len) covers_char = true;
      }
    }
    if (!covers_char) relax(pos, pos + char_len, unk_score, unk_id_);
    pos += char_len;
  }

  // Walk back from the end; runs of <unk> pieces are fused into one span, as `tokenizers` does.
  std::vector<std::pair<size_t, size_t>> spans;  // [start, end) of each token, reversed
  std::vector<bool> is_unk;
  for (size_t end = n; end > 0;) {
    const Best& b = best[end];
    const size_t start = size_t(b.start);
    if (b.id == unk_id_ && !is_unk.empty() && is_unk.back())
      spans.back().first = start;
    else {
      spans.emplace_back(start, end);
      is_unk.push_back(b.id == unk_id_);
    }
    end = start;
  }
  for (size_t k = spans.size(); k-- > 0;) {
    const std::string_view piece = text.substr(spans[k].first, spans[k].second - spans[k].first);
    const int64_t id = find(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int64_t> bytes;
      for (unsigned char c : piece) {
        const int64_t b = find(byte_piece(c));
        if (b < 0) break;
        bytes.push_back(b);
      }
      if (bytes.size() == piece.size()) {
        out.insert(out.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    out.push_back(unk_id_);
  }
}

}  // namespace kestrel
