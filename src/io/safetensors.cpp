#include "io/safetensors.h"

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/bytes.h"
#include "io/weights.h"

namespace kestrel {
namespace {

// The reference implementation refuses headers over 100 MB; a larger length means a corrupt or hostile file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string where(const std::string& label, const std::string& name) {
  return label + ": tensor '" + name + "': ";
}

// A JSON number that must be a non-negative integer fitting int64 (dims and offsets).
uint64_t non_negative(const nlohmann::json& v, const std::string& ctx, const char* what) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(INT64_MAX)) fail(ctx + what + " " + std::to_string(u) + " is too large");
    return u;
  }
  if (v.is_number_integer()) fail(ctx + what + " " + std::to_string(v.get<int64_t>()) + " is negative");
  std::string text = v.dump();
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  fail(ctx + what + " must be an integer, got " + text);
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& info, uint64_t data_start,
                             uint64_t data_size, const std::string& label) {
  const std::string ctx = where(label, name);
  if (!info.is_object()) fail(ctx + "entry must be a JSON object");
  SafetensorsEntry e;
  e.name = name;

  auto dtype_it = info.find("dtype");
  if (dtype_it == info.end()) fail(ctx + "missing 'dtype'");
  if (!dtype_it->is_string()) fail(ctx + "'dtype' must be a string");
  const std::string dtype = dtype_it->get<std::string>();
  if (!parse_dtype(dtype, &e.dtype)) fail(ctx + "unsupported dtype '" + dtype + "'");

  auto shape_it = info.find("shape");
  if (shape_it == info.end()) fail(ctx + "missing 'shape'");
  if (!shape_it->is_array()) fail(ctx + "'shape' must be an array");
  uint64_t numel = 1;
  for (const auto& d : *shape_it) {
    uint64_t dim = non_negative(d, ctx, "shape dimension");
    e.shape.push_back(int64_t(dim));
    if (!bytes::checked_mul(numel, dim, &numel)) fail(ctx + "shape " + shape_str(e.shape) + " overflows");
  }
  uint64_t nbytes = 0;
  if (!bytes::checked_mul(numel, dtype_size(e.dtype), &nbytes) || nbytes > uint64_t(INT64_MAX))
    fail(ctx + "shape " + shape_str(e.shape) + " is too large");

  auto off_it = info.find("data_offsets");
  if (off_it == info.end()) fail(ctx + "missing 'data_offsets'");
  if (!off_it->is_array() || off_it->size() != 2) fail(ctx + "'data_offsets' must be an array [begin, end]");
  const uint64_t begin = non_negative((*off_it)[0], ctx, "data_offsets begin");
  const uint64_t end = non_negative((*off_it)[1], ctx, "data_offsets end");
  const std::string offsets = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
  if (end < begin) fail(ctx + offsets + " end before begin");
  if (end > data_size)
    fail(ctx + offsets + " run past the data section (" + std::to_string(data_size) + " bytes)");
  if (end - begin != nbytes)
    fail(ctx + offsets + " hold " + std::to_string(end - begin) + " bytes but shape " + shape_str(e.shape) +
         " of " + dtype + " needs " + std::to_string(nbytes));
  e.begin = data_start + begin;
  e.end = data_start + end;
  return e;
}

}  // namespace

std::vector<SafetensorsEntry> parse_safetensors(const unsigned char* data, size_t size,
                                                const std::string& label) {
  if (size < 8) fail(label + ": too small for a safetensors file (" + std::to_string(size) + " bytes)");
  const uint64_t header_len = bytes::le64(data);
  if (header_len > kMaxHeaderBytes)
    fail(label + ": safetensors header length " + std::to_string(header_len) + " is absurd (limit " +
         std::to_string(kMaxHeaderBytes) + ")");
  if (header_len > size - 8)
    fail(label + ": safetensors header length " + std::to_string(header_len) +
         " runs past the end of the file (" + std::to_string(size) + " bytes)");

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail(label + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) fail(label + ": safetensors header must be a JSON object");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  std::vector<SafetensorsEntry> entries;
  entries.reserve(header.size());
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;  // free-form string map; nothing Kestrel needs
    entries.push_back(parse_entry(name, info, data_start, data_size, label));
  }

  // Two tensors must never share bytes: sort by position and compare neighbours (empty tensors share
  // nothing).
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& prev = *by_offset[i - 1];
    const auto& cur = *by_offset[i];
    if (cur.begin < prev.end)
      fail(label + ": tensors '" + prev.name + "' and '" + cur.name + "' overlap in the data section");
  }
  // nlohmann's object is a std::map, so entries are already in name order.
  return entries;
}

Weights SafetensorsReader::load(const std::filesystem::path& file) {
  auto map = std::make_shared<MappedFile>(file);
  const std::string label = file.string();
  Weights w;
  w.origin_ = file;
  for (const auto& e : parse_safetensors(map->data(), map->size(), label)) {
    TensorView v;
    v.dtype = e.dtype;
    v.shape = e.shape;
    v.data = map->data() + e.begin;
    w.add_view(e.name, v, label);
  }
  w.maps_.push_back(std::move(map));
  w.files_paths_.push_back(file);
  return w;
}

}  // namespace kestrel
