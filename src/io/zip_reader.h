#pragma once
// A read-only zip archive over a byte buffer (usually a mapped file), enough for torch.save's format:
// the central directory (zip64 included, for files past 4 GiB), stored entries viewed in place, deflated
// entries inflated by zlib into owned memory. Encrypted entries and other methods are errors.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kestrel {

struct ZipEntry {
  std::string name;
  uint16_t flags = 0, method = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0, size = 0, local_header_offset = 0;
};

// An entry's bytes: either a view into the archive buffer or, for deflated entries, memory held by `owned`.
struct ZipBytes {
  const unsigned char* data = nullptr;
  size_t size = 0;
  std::shared_ptr<std::vector<unsigned char>> owned;
};

class ZipReader {
 public:
  // Parses the central directory; throws kestrel::Error naming `label` if the buffer is not a sound zip.
  // The buffer must outlive the reader and every ZipBytes view it hands out.
  ZipReader(const unsigned char* data, size_t size, std::string label);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;
  ZipBytes read(const ZipEntry& e) const;

  // Starts with a local file header signature ("PK\3\4").
  static bool looks_like_zip(const unsigned char* data, size_t size);

 private:
  void parse_central_directory();
  const unsigned char* data_;
  size_t size_;
  std::string label_;
  std::vector<ZipEntry> entries_;
};

}  // namespace kestrel
