#pragma once
// Lets every command that reads a model folder take an engine file instead: the small files an engine carries
// (config.json, generation_config.json, tokenizer files) are unpacked once into Kestrel's cache, next to a
// link `engine.kestrel` to the engine itself. Config and tokenizer readers then see an ordinary folder, and
// Model::load(folder) maps the linked engine. Weights are never unpacked.
#include <filesystem>
#include <optional>

namespace kestrel {

// Kestrel's own cache: KESTREL_CACHE, else XDG_CACHE_HOME/kestrel, else ~/.cache/kestrel.
std::filesystem::path kestrel_cache_dir();

// The name of the link inside an unpacked folder.
inline constexpr const char* kUnpackedEngineLink = "engine.kestrel";

// Unpacks `engine` (checking each unpacked section's checksum) into
// kestrel_cache_dir()/engines/unpacked/<content id>/ unless that folder already exists; returns the folder.
std::filesystem::path unpack_engine(const std::filesystem::path& engine);

// The engine file behind a folder made by unpack_engine, if `dir` is one.
std::optional<std::filesystem::path> unpacked_engine_file(const std::filesystem::path& dir);

}  // namespace kestrel
