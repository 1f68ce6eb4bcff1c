#include "tokenizers/spiece_model.h"

#include <sentencepiece_processor.h>

#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>

#include "core/error.h"

namespace kestrel {

namespace {

// Just enough of the protobuf wire format to reach ModelProto.normalizer_spec (field 3, a message) and in it
// precompiled_charsmap (field 2, bytes), and ModelProto.trainer_spec (field 2) .model_type (field 3, enum).
class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  // Reads the next field's tag; returns false on malformed input.
  bool next(uint32_t* field, uint32_t* wire_type) {
    uint64_t tag;
    if (!varint(&tag)) return false;
    *field = uint32_t(tag >> 3);
    *wire_type = uint32_t(tag & 7);
    return true;
  }
  bool varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const unsigned char b = static_cast<unsigned char>(data_[pos_++]);
      *v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool bytes(std::string_view* out) {
    uint64_t n;
    if (!varint(&n) || n > data_.size() - pos_) return false;
    *out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool skip(uint32_t wire_type) {
    uint64_t v;
    std::string_view s;
    switch (wire_type) {
      case 0:
        return varint(&v);
      case 1:
        return advance(8);
      case 2:
        return bytes(&s);
      case 5:
        return advance(4);
      default:
        return false;
    }
  }

 private:
  bool advance(size_t n) {
    if (n > data_.size() - pos_) return false;
    pos_ += n;
    return true;
  }
  std::string_view data_;
  size_t pos_ = 0;
};

// The first length-delimited field `field` of a message, if present.
std::optional<std::string_view> find_bytes_field(std::string_view message, uint32_t wanted) {
  WireReader r(message);
  while (!r.done()) {
    uint32_t field, wire;
    if (!r.next(&field, &wire)) return std::nullopt;
    if (field == wanted && wire == 2) {
      std::string_view s;
      return r.bytes(&s) ? std::optional(s) : std::nullopt;
    }
    if (!r.skip(wire)) return std::nullopt;
  }
  return std::nullopt;
}

std::optional<uint64_t> find_varint_field(std::string_view message, uint32_t wanted) {
  WireReader r(message);
  std::optional<uint64_t> last;
  while (!r.done()) {
    uint32_t field, wire;
    if (!r.next(&field, &wire)) return last;
    if (field == wanted && wire == 0) {
      uint64_t v;
      if (!r.varint(&v)) return last;
      last = v;  // protobuf: the last occurrence wins
    } else if (!r.skip(wire)) {
      return last;
    }
  }
  return last;
}

}  // namespace

SpieceModel read_spiece_model(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(where + ": cannot open the SentencePiece model");
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string serialized = buf.str();

  sentencepiece::SentencePieceProcessor spm;
  const auto status = spm.LoadFromSerializedProto(serialized);
  if (!status.ok()) fail(where + ": not a valid SentencePiece model (" + status.ToString() + ")");

  // TrainerSpec.model_type: 1 = UNIGRAM (the default when absent), 2 = BPE, 3 = WORD, 4 = CHAR.
  if (auto trainer = find_bytes_field(serialized, 2)) {
    const uint64_t type = find_varint_field(*trainer, 3).value_or(1);
    if (type != 1)
      fail(where + ": SentencePiece model_type " + std::to_string(type) +
           " is not supported (only Unigram, as T5 uses)");
  }

  SpieceModel m;
  m.pieces.reserve(size_t(spm.GetPieceSize()));
  for (int id = 0; id < spm.GetPieceSize(); ++id) {
    m.pieces.push_back({spm.IdToPiece(id), double(spm.GetScore(id))});
  }
  if (auto normalizer = find_bytes_field(serialized, 3)) {
    if (auto charsmap = find_bytes_field(*normalizer, 2)) m.precompiled_charsmap.assign(*charsmap);
  }
  return m;
}

}  // namespace kestrel
