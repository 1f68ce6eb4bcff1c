#pragma once
// Reads a SentencePiece model file (spiece.model) with libsentencepiece: its pieces and scores, and the
// normaliser's precompiled_charsmap (not exposed by the library's API, so read from the serialized proto).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tokenizers/unigram.h"

namespace kestrel {

struct SpieceModel {
  std::vector<UnigramModel::Piece> pieces;
  std::string precompiled_charsmap;  // empty when the model normalises with "identity"
};

// Throws kestrel::Error naming the file if it is missing, corrupt or not a Unigram model.
SpieceModel read_spiece_model(const std::filesystem::path& path);

}  // namespace kestrel
