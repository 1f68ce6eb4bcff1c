#include "io/torch_bin.h"

#include <cstring>
#include <map>
#include <memory>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/bytes.h"
#include "io/torch_pickle.h"
#include "io/weights.h"
#include "io/zip_reader.h"

namespace kestrel {
namespace {

constexpr std::string_view kPickleSuffix = "/data.pkl";
// An expanded view (stride 0) may describe far more elements than its storage holds; copying it is allowed up
// to this size so a few hostile bytes cannot demand terabytes.
constexpr uint64_t kMaxExpandedCopyBytes = uint64_t(1) << 30;

// The archive folder name is free (torch uses the file stem); find it from the one entry ending in data.pkl.
std::string archive_prefix(const ZipReader& zip, const std::string& label) {
  for (const auto& e : zip.entries()) {
    if (e.name.size() > kPickleSuffix.size() && e.name.ends_with(kPickleSuffix) &&
        e.name.find('/') == e.name.size() - kPickleSuffix.size())
      return e.name.substr(0, e.name.size() - kPickleSuffix.size() + 1);  // keeps the '/'
  }
  fail(label + ": zip archive has no <name>/data.pkl: not a torch.save checkpoint");
}

void check_byteorder(const ZipReader& zip, const std::string& prefix, const std::string& label) {
  const ZipEntry* e = zip.find(prefix + "byteorder");
  if (!e) return;  // written since torch 1.10; older files are little-endian
  ZipBytes b = zip.read(*e);
  std::string_view order(reinterpret_cast<const char*>(b.data), b.size);
  if (order == "big") fail(label + ": big-endian torch checkpoints are not supported");
  if (order != "little") fail(label + ": unknown byteorder '" + std::string(order) + "'");
}

struct Layout {
  bool contiguous = true;
  uint64_t numel = 0;
  uint64_t extent =
      0;  // elements from the storage offset to one past the last element (0 for an empty tensor)
};

// Checks sizes, strides and offset against the storage and says whether the tensor is row-major contiguous.
Layout check_layout(const PickledTensor& t, const std::string& ctx) {
  Layout l;
  if (t.storage_offset < 0 || t.storage_offset > t.storage_numel)
    fail(ctx + "storage offset " + std::to_string(t.storage_offset) + " outside its storage of " +
         std::to_string(t.storage_numel) + " elements");
  uint64_t numel = 1, last = 0;
  for (size_t d = 0; d < t.shape.size(); ++d) {
    if (t.shape[d] < 0) fail(ctx + "negative size in " + shape_str(t.shape));
    if (t.stride[d] < 0) fail(ctx + "negative stride");
    if (!bytes::checked_mul(numel, uint64_t(t.shape[d]), &numel)) fail(ctx + "size overflows");
  }
  l.numel = numel;
  if (numel == 0) return l;
  uint64_t expected = 1;  // row-major stride of dim d
  for (size_t d = t.shape.size(); d-- > 0;) {
    uint64_t span = 0;
    if (!bytes::checked_mul(uint64_t(t.shape[d] - 1), uint64_t(t.stride[d]), &span) ||
        !bytes::checked_add(last, span, &last))
      fail(ctx + "strides overflow");
    if (t.shape[d] != 1 && uint64_t(t.stride[d]) != expected) l.contiguous = false;
    expected *= uint64_t(t.shape[d]);  // cannot overflow: bounded by numel
  }
  if (!bytes::checked_add(last, 1, &l.extent) ||
      !bytes::checked_add(l.extent, uint64_t(t.storage_offset), &last) || last > uint64_t(t.storage_numel))
    fail(ctx + "size " + shape_str(t.shape) + " at offset " + std::to_string(t.storage_offset) +
         " runs past its storage of " + std::to_string(t.storage_numel) + " elements");
  return l;
}

// Gathers a strided tensor into row-major order.
std::vector<unsigned char> gather(const PickledTensor& t, const unsigned char* base, size_t elem) {
  const uint64_t numel = uint64_t(shape_numel(t.shape));
  std::vector<unsigned char> out(numel * elem);
  std::vector<int64_t> index(t.shape.size(), 0);
  for (uint64_t n = 0; n < numel; ++n) {
    uint64_t src = 0;
    for (size_t d = 0; d < index.size(); ++d) src += uint64_t(index[d]) * uint64_t(t.stride[d]);
    std::memcpy(out.data() + n * elem, base + src * elem, elem);
    for (size_t d = index.size(); d-- > 0;) {  // odometer increment
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

}  // namespace

Weights TorchBinReader::load(const std::filesystem::path& file) {
  auto map = std::make_shared<MappedFile>(file);
  Weights w = parse(map->data(), map->size(), file.string());
  w.origin_ = file;
  w.maps_.push_back(std::move(map));
  w.files_paths_.push_back(file);
  return w;
}

Weights TorchBinReader::parse(const unsigned char* data, size_t size, const std::string& label) {
  if (!ZipReader::looks_like_zip(data, size)) {
    // Before torch 1.6, torch.save wrote a bare pickle stream (it starts with the PROTO opcode 0x80).
    if (size >= 2 && data[0] == 0x80)
      fail(label +
           ": unsupported legacy torch format; re-save it with torch>=1.6 (or convert to safetensors)");
    fail(label + ": not a torch.save zip archive");
  }
  ZipReader zip(data, size, label);
  const std::string prefix = archive_prefix(zip, label);
  check_byteorder(zip, prefix, label);

  const ZipEntry* pkl = zip.find(prefix + "data.pkl");
  ZipBytes pickle = zip.read(*pkl);
  std::vector<PickledTensor> tensors = parse_torch_pickle(pickle.data, pickle.size, label + ":data.pkl");

  Weights w;
  w.origin_ = label;
  std::map<std::string, ZipBytes> storages;  // each data/<key> read (or inflated) once
  for (const PickledTensor& t : tensors) {
    const std::string ctx = label + ": tensor '" + t.name + "': ";
    auto it = storages.find(t.storage_key);
    if (it == storages.end()) {
      const ZipEntry* e = zip.find(prefix + "data/" + t.storage_key);
      if (!e) fail(ctx + "storage '" + t.storage_key + "' is missing from the archive");
      it = storages.emplace(t.storage_key, zip.read(*e)).first;
      if (it->second.owned) w.owned_.push_back(it->second.owned);  // inflated: the Weights keep it alive
    }
    const ZipBytes& storage = it->second;
    const size_t elem = dtype_size(t.dtype);
    uint64_t storage_bytes = 0;
    if (!bytes::checked_mul(uint64_t(t.storage_numel), elem, &storage_bytes) || storage_bytes > storage.size)
      fail(ctx + "storage '" + t.storage_key + "' holds " + std::to_string(storage.size) +
           " bytes but claims " + std::to_string(t.storage_numel) + " elements of " +
           std::string(dtype_name(t.dtype)));
    const Layout layout = check_layout(t, ctx);
    const unsigned char* base = storage.data + uint64_t(t.storage_offset) * elem;
    if (layout.contiguous) {
      w.add_view(t.name, TensorView{t.dtype, t.shape, base}, label);
      continue;
    }
    uint64_t copy_bytes = 0;
    if (!bytes::checked_mul(layout.numel, elem, &copy_bytes) ||
        (copy_bytes > storage_bytes && copy_bytes > kMaxExpandedCopyBytes))
      fail(ctx + "expanded view " + shape_str(t.shape) + " is too large to copy");
    w.add_owned(t.name, t.dtype, t.shape, gather(t, base, elem), label);
  }
  return w;
}

}  // namespace kestrel
