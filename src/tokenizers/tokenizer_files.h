#pragma once
// Reading the small text files tokenizers come in. Errors are one line naming the file (and, for JSON, where
// in it).
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace kestrel {

std::string read_text_file(const std::filesystem::path& path);
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace kestrel
