#include "io/zip_reader.h"

#include <zlib.h>

#include <algorithm>

#include "core/error.h"
#include "io/bytes.h"

namespace kestrel {
namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSig = 0x06054b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr size_t kEndOfCentralDirSize = 22, kZip64LocatorSize = 20, kZip64EndSize = 56;
constexpr size_t kCentralHeaderSize = 46, kLocalHeaderSize = 30;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kMethodStored = 0, kMethodDeflated = 8;
// Deflate cannot expand data by more than about 1032:1; a larger claim is a corrupt header, not a real entry.
constexpr uint64_t kMaxDeflateRatio = 1032;

}  // namespace

bool ZipReader::looks_like_zip(const unsigned char* data, size_t size) {
  return size >= 4 && bytes::le32(data) == kLocalHeaderSig;
}

ZipReader::ZipReader(const unsigned char* data, size_t size, std::string label)
    : data_(data), size_(size), label_(std::move(label)) {
  parse_central_directory();
}

void ZipReader::parse_central_directory() {
  const std::string bad = label_ + ": corrupt zip archive: ";
  if (size_ < kEndOfCentralDirSize) fail(bad + "too small");

  // The end-of-central-directory record sits in the last 22 + 65535 (max comment) bytes.
  size_t eocd = SIZE_MAX;
  const size_t lowest = size_ > kEndOfCentralDirSize + 0xffff ? size_ - kEndOfCentralDirSize - 0xffff : 0;
  for (size_t pos = size_ - kEndOfCentralDirSize + 1; pos-- > lowest;) {
    if (bytes::le32(data_ + pos) == kEndOfCentralDirSig) {
      eocd = pos;
      break;
    }
  }
  if (eocd == SIZE_MAX) fail(bad + "no end-of-central-directory record");

  const unsigned char* e = data_ + eocd;
  uint64_t count = bytes::le16(e + 10);
  uint64_t cd_size = bytes::le32(e + 12);
  uint64_t cd_offset = bytes::le32(e + 16);
  if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    if (eocd < kZip64LocatorSize || bytes::le32(data_ + eocd - kZip64LocatorSize) != kZip64LocatorSig)
      fail(bad + "zip64 sizes without a zip64 locator");
    const uint64_t z64 = bytes::le64(data_ + eocd - kZip64LocatorSize + 8);
    if (!bytes::in_bounds(z64, kZip64EndSize, size_) || bytes::le32(data_ + z64) != kZip64EndSig)
      fail(bad + "zip64 end record out of bounds");
    count = bytes::le64(data_ + z64 + 32);
    cd_size = bytes::le64(data_ + z64 + 40);
    cd_offset = bytes::le64(data_ + z64 + 48);
  }
  if (!bytes::in_bounds(cd_offset, cd_size, size_)) fail(bad + "central directory out of bounds");
  if (count > cd_size / kCentralHeaderSize) fail(bad + "entry count does not fit the central directory");

  entries_.reserve(count);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (!bytes::in_bounds(pos, kCentralHeaderSize, cd_end) || bytes::le32(data_ + pos) != kCentralHeaderSig)
      fail(bad + "bad central directory entry " + std::to_string(i));
    const unsigned char* h = data_ + pos;
    ZipEntry z;
    z.flags = bytes::le16(h + 8);
    z.method = bytes::le16(h + 10);
    z.crc32 = bytes::le32(h + 16);
    z.compressed_size = bytes::le32(h + 20);
    z.size = bytes::le32(h + 24);
    const uint16_t name_len = bytes::le16(h + 28), extra_len = bytes::le16(h + 30),
                   comment_len = bytes::le16(h + 32);
    z.local_header_offset = bytes::le32(h + 42);
    const uint64_t var_len = uint64_t(name_len) + extra_len + comment_len;
    if (!bytes::in_bounds(pos + kCentralHeaderSize, var_len, cd_end))
      fail(bad + "central directory entry " + std::to_string(i) + " runs past the directory");
    z.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);

    // Zip64 extra field: 8-byte values for exactly those fields that were 0xffffffff, in this order.
    const unsigned char* extra = h + kCentralHeaderSize + name_len;
    for (size_t x = 0; x + 4 <= extra_len;) {
      const uint16_t id = bytes::le16(extra + x), len = bytes::le16(extra + x + 2);
      if (x + 4 + len > extra_len) fail(bad + "extra field of '" + z.name + "' runs past its entry");
      if (id == kZip64ExtraId) {
        const unsigned char* f = extra + x + 4;
        size_t left = len;
        auto take = [&](uint64_t* field) {
          if (*field != 0xffffffff) return;
          if (left < 8) fail(bad + "short zip64 extra field in '" + z.name + "'");
          *field = bytes::le64(f);
          f += 8;
          left -= 8;
        };
        take(&z.size);
        take(&z.compressed_size);
        take(&z.local_header_offset);
      }
      x += 4 + len;
    }
    entries_.push_back(std::move(z));
    pos += kCentralHeaderSize + var_len;
  }
}

const ZipEntry* ZipReader::find(std::string_view name) const {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const ZipEntry& e) { return e.name == name; });
  return it == entries_.end() ? nullptr : &*it;
}

ZipBytes ZipReader::read(const ZipEntry& e) const {
  const std::string ctx = label_ + ": zip entry '" + e.name + "': ";
  if (e.flags & 1) fail(ctx + "encrypted entries are not supported");
  if (!bytes::in_bounds(e.local_header_offset, kLocalHeaderSize, size_) ||
      bytes::le32(data_ + e.local_header_offset) != kLocalHeaderSig)
    fail(ctx + "bad local header offset " + std::to_string(e.local_header_offset));
  const unsigned char* h = data_ + e.local_header_offset;
  // The local header's own name/extra lengths decide where the data starts (they may differ from the
  // directory).
  const uint64_t start = e.local_header_offset + kLocalHeaderSize + bytes::le16(h + 26) + bytes::le16(h + 28);
  if (!bytes::in_bounds(start, e.compressed_size, size_))
    fail(ctx + std::to_string(e.compressed_size) + " bytes at offset " + std::to_string(start) +
         " run past the end of the archive");
  const unsigned char* src = data_ + start;

  if (e.method == kMethodStored) {
    if (e.size != e.compressed_size) fail(ctx + "stored entry with different compressed and plain sizes");
    return {src, size_t(e.size), nullptr};
  }
  if (e.method != kMethodDeflated) fail(ctx + "unsupported compression method " + std::to_string(e.method));

  uint64_t max_size = 0;
  if (!bytes::checked_mul(e.compressed_size, kMaxDeflateRatio, &max_size) || e.size > max_size + 64)
    fail(ctx + "claims " + std::to_string(e.size) + " bytes from " + std::to_string(e.compressed_size) +
         " compressed: corrupt sizes");
  auto out = std::make_shared<std::vector<unsigned char>>(size_t(e.size));
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) internal_error(ctx + "zlib inflateInit2 failed");
  // zlib's avail_* fields are 32-bit: feed and drain in chunks so entries past 4 GiB inflate too.
  uint64_t in_left = e.compressed_size, out_left = e.size;
  zs.next_in = const_cast<unsigned char*>(src);
  unsigned char empty_sink = 0;  // zlib rejects a null next_out, which an empty vector's data() may be
  zs.next_out = e.size ? out->data() : &empty_sink;
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (zs.avail_in == 0 && in_left > 0) {
      zs.avail_in = uInt(std::min<uint64_t>(in_left, 1u << 30));
      in_left -= zs.avail_in;
    }
    if (zs.avail_out == 0 && out_left > 0) {
      zs.avail_out = uInt(std::min<uint64_t>(out_left, 1u << 30));
      out_left -= zs.avail_out;
    }
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0) break;    // input exhausted before stream end
    if (rc == Z_BUF_ERROR && zs.avail_out == 0 && out_left == 0) break;  // more output than the header claims
  }
  const uint64_t produced = zs.total_out;
  inflateEnd(&zs);
  if (rc != Z_STREAM_END) fail(ctx + "corrupt deflate stream");
  if (produced != e.size)
    fail(ctx + "inflated to " + std::to_string(produced) + " bytes, header says " + std::to_string(e.size));
  uLong crc = crc32_z(0L, Z_NULL, 0);
  crc = crc32_z(crc, out->data(), out->size());
  if (uint32_t(crc) != e.crc32) fail(ctx + "CRC mismatch");
  return {out->data(), out->size(), out};
}

}  // namespace kestrel
