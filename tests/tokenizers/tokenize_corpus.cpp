// kestrel_tokenize_corpus MODEL_DIR REQUEST.json [--model-type TYPE]
//
// REQUEST.json: {"encode": [ITEM, ...], "decode": [[id, ...], ...], "add_special_tokens": true}
// where ITEM is a string, or {"hex": "..."} for raw bytes that need not be valid UTF-8.
// Prints {"encode": [[id, ...], ...], "decode": [TEXT, ...], "decode_skip_special": [TEXT, ...],
//         "vocab_size": N, "eos_id": ID|null, "pad_id": ID|null, "kind": "...", "encode_seconds": S}.
// The model type comes from --model-type, else from MODEL_DIR/config.json, else from the files alone.
// Any error is one line on stderr and exit status 1.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "tokenizers/tokenizer.h"
#include "tokenizers/tokenizer_files.h"

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string hex_to_bytes(const std::string& hex) {
  if (hex.size() % 2) kestrel::fail("request: hex string of odd length");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    size_t used = 0;
    const int byte = std::stoi(hex.substr(i, 2), &used, 16);
    if (used != 2) kestrel::fail("request: bad hex digits '" + hex.substr(i, 2) + "'");
    out.push_back(char(byte));
  }
  return out;
}

std::string model_type_of(const fs::path& dir) {
  const fs::path config = dir / "config.json";
  if (!fs::exists(config)) return "";
  return kestrel::read_json_file(config).value("model_type", "");
}

int run(int argc, char** argv) {
  if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "--model-type")) {
    std::cerr << "usage: kestrel_tokenize_corpus MODEL_DIR REQUEST.json [--model-type TYPE]\n";
    return 1;
  }
  const fs::path dir = argv[1];
  const std::string model_type = argc == 5 ? argv[4] : model_type_of(dir);
  const auto tokenizer = kestrel::load_tokenizer(dir, model_type);
  const json request = kestrel::read_json_file(argv[2]);
  const bool add_special = request.value("add_special_tokens", true);

  json result = {{"vocab_size", tokenizer->vocab_size()}, {"kind", tokenizer->kind()}};
  result["eos_id"] = tokenizer->eos_id() ? json(*tokenizer->eos_id()) : json(nullptr);
  result["pad_id"] = tokenizer->pad_id() ? json(*tokenizer->pad_id()) : json(nullptr);
  json& encoded = result["encode"] = json::array();
  std::chrono::duration<double> encode_time{0};
  for (const auto& item : request.value("encode", json::array())) {
    const std::string text = item.is_string() ? item.get<std::string>() : hex_to_bytes(item.at("hex"));
    const auto start = std::chrono::steady_clock::now();
    auto ids = tokenizer->encode(text, add_special);
    encode_time += std::chrono::steady_clock::now() - start;
    encoded.push_back(std::move(ids));
  }
  result["encode_seconds"] = encode_time.count();
  json& decoded = result["decode"] = json::array();
  json& decoded_skip = result["decode_skip_special"] = json::array();
  for (const auto& ids : request.value("decode", json::array())) {
    const auto v = ids.get<std::vector<int64_t>>();
    decoded.push_back(tokenizer->decode(v, false));
    decoded_skip.push_back(tokenizer->decode(v, true));
  }
  std::cout << result.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const kestrel::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
