#pragma once
// Test-only writers for the formats io/ reads: safetensors files, zip archives (stored or deflated entries,
// optionally zip64 records) and torch.save-style state-dict pickles. The tests build each corrupt file from a
// valid one, so every check in the readers gets a case.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace kestrel::test_files {

using Bytes = std::vector<unsigned char>;

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("kestrel_io_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
inline void write_file(const std::filesystem::path& p, const std::string& s) {
  write_file(p, Bytes(s.begin(), s.end()));
}

inline void put_le(Bytes& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(uint8_t(v >> (8 * i)));
}

template <typename T>
Bytes as_bytes(const std::vector<T>& v) {
  Bytes b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// 8-byte little-endian header length, the header text, then the data section.
inline Bytes safetensors_file(const std::string& header, const Bytes& data) {
  Bytes b;
  put_le(b, header.size(), 8);
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

struct ZipFileSpec {
  std::string name;
  Bytes data;
  bool deflate = false;
  size_t align = 1;  // pad the local header's extra field so the data starts at a multiple of this
};

inline Bytes deflate_raw(const Bytes& in) {
  z_stream zs{};
  deflateInit2(&zs, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  Bytes out(deflateBound(&zs, uLong(in.size())));
  zs.next_in = const_cast<unsigned char*>(in.data());
  zs.avail_in = uInt(in.size());
  zs.next_out = out.data();
  zs.avail_out = uInt(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// A zip archive; with zip64, sizes and offsets go into zip64 extra fields and a zip64 end record, as writers
// do for archives past 4 GiB.
inline Bytes zip_archive(const std::vector<ZipFileSpec>& files, bool zip64 = false) {
  Bytes out, central;
  for (const auto& f : files) {
    const Bytes payload = f.deflate ? deflate_raw(f.data) : f.data;
    const uint32_t crc = uint32_t(crc32(0, f.data.data(), uInt(f.data.size())));
    const uint64_t offset = out.size();
    size_t pad = 0;
    while ((offset + 30 + f.name.size() + pad) % f.align) ++pad;
    put_le(out, 0x04034b50, 4);
    put_le(out, 20, 2);
    put_le(out, 0, 2);
    put_le(out, f.deflate ? 8 : 0, 2);
    put_le(out, 0, 4);  // time, date
    put_le(out, crc, 4);
    put_le(out, payload.size(), 4);
    put_le(out, f.data.size(), 4);
    put_le(out, f.name.size(), 2);
    put_le(out, pad, 2);
    out.insert(out.end(), f.name.begin(), f.name.end());
    out.insert(out.end(), pad, 0);
    out.insert(out.end(), payload.begin(), payload.end());

    put_le(central, 0x02014b50, 4);
    put_le(central, 45, 2);
    put_le(central, 45, 2);
    put_le(central, 0, 2);
    put_le(central, f.deflate ? 8 : 0, 2);
    put_le(central, 0, 4);
    put_le(central, crc, 4);
    put_le(central, zip64 ? 0xffffffff : payload.size(), 4);
    put_le(central, zip64 ? 0xffffffff : f.data.size(), 4);
    put_le(central, f.name.size(), 2);
    put_le(central, zip64 ? 28 : 0, 2);
    put_le(central, 0, 2);  // comment
    put_le(central, 0, 2);  // disk
    put_le(central, 0, 2);
    put_le(central, 0, 4);
    put_le(central, zip64 ? 0xffffffff : offset, 4);
    central.insert(central.end(), f.name.begin(), f.name.end());
    if (zip64) {
      put_le(central, 0x0001, 2);
      put_le(central, 24, 2);
      put_le(central, f.data.size(), 8);
      put_le(central, payload.size(), 8);
      put_le(central, offset, 8);
    }
  }
  const uint64_t cd_offset = out.size();
  out.insert(out.end(), central.begin(), central.end());
  if (zip64) {
    const uint64_t z64 = out.size();
    put_le(out, 0x06064b50, 4);
    put_le(out, 44, 8);
    put_le(out, 45, 2);
    put_le(out, 45, 2);
    put_le(out, 0, 4);
    put_le(out, 0, 4);
    put_le(out, files.size(), 8);
    put_le(out, files.size(), 8);
    put_le(out, central.size(), 8);
    put_le(out, cd_offset, 8);
    put_le(out, 0x07064b50, 4);
    put_le(out, 0, 4);
    put_le(out, z64, 8);
    put_le(out, 1, 4);
  }
  put_le(out, 0x06054b50, 4);
  put_le(out, 0, 2);
  put_le(out, 0, 2);
  put_le(out, zip64 ? 0xffff : files.size(), 2);
  put_le(out, zip64 ? 0xffff : files.size(), 2);
  put_le(out, zip64 ? 0xffffffff : central.size(), 4);
  put_le(out, zip64 ? 0xffffffff : cd_offset, 4);
  put_le(out, 0, 2);
  return out;
}

// Emits pickle opcodes the way torch.save does for a state dict (protocol 2, no memo).
class PickleWriter {
 public:
  PickleWriter& proto() { return op(0x80).byte(2); }
  PickleWriter& global(const std::string& module, const std::string& name) {
    op('c');
    for (char c : module + "\n" + name + "\n") byte(uint8_t(c));
    return *this;
  }
  PickleWriter& str(const std::string& s) {
    op('X');
    put_le(b_, s.size(), 4);
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  PickleWriter& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').byte(uint8_t(v));
    op(0x8a).byte(8);
    put_le(b_, uint64_t(v), 8);
    return *this;
  }
  PickleWriter& int_tuple(const std::vector<int64_t>& xs) {
    mark();
    for (int64_t x : xs) integer(x);
    return op('t');
  }
  PickleWriter& mark() { return op('('); }
  PickleWriter& op(uint8_t c) { return byte(c); }
  PickleWriter& byte(uint8_t c) {
    b_.push_back(c);
    return *this;
  }
  // OrderedDict() then MARK: entries follow, closed by end_state_dict().
  PickleWriter& begin_state_dict() {
    return proto().global("collections", "OrderedDict").op(')').op('R').mark();
  }
  PickleWriter& tensor(const std::string& name, const std::string& storage_class, const std::string& key,
                       int64_t storage_numel, int64_t offset, const std::vector<int64_t>& size,
                       const std::vector<int64_t>& stride) {
    str(name).global("torch._utils", "_rebuild_tensor_v2").mark();
    mark()
        .str("storage")
        .global("torch", storage_class)
        .str(key)
        .str("cpu")
        .integer(storage_numel)
        .op('t')
        .op('Q');
    integer(offset).int_tuple(size).int_tuple(stride).op(0x89);
    global("collections", "OrderedDict").op(')').op('R');  // backward hooks
    return op('t').op('R');
  }
  PickleWriter& end_state_dict() { return op('u').op('.'); }
  const Bytes& bytes() const { return b_; }

 private:
  Bytes b_;
};

}  // namespace kestrel::test_files
