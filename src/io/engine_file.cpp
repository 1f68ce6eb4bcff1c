// The engine file container: header, aligned checksummed sections, JSON index (see engine_file.h).
#include "io/engine_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include "core/error.h"

namespace kestrel {

namespace fs = std::filesystem;

namespace {

// Header layout: magic[8] version u32, reserved u32, file_size u64, index_offset u64, index_size u64,
// index_crc32 u32, reserved[16], header_crc32 u32 (over bytes [0, 60)).
constexpr size_t kVersionAt = 8, kFileSizeAt = 16, kIndexOffsetAt = 24, kIndexSizeAt = 32, kIndexCrcAt = 40,
                 kHeaderCrcAt = 60;

std::string rebuild_hint(const std::string& source) {
  return source + ": rebuild it with `kestrel build MODEL -o " + source + "`";
}

template <typename T>
T read_le(std::string_view bytes, size_t at) {
  T v;
  std::memcpy(&v, bytes.data() + at, sizeof(T));  // x86-64 and aarch64 Linux are little-endian
  return v;
}

template <typename T>
void write_le(unsigned char* out, size_t at, T v) {
  std::memcpy(out + at, &v, sizeof(T));
}

}  // namespace

uint32_t crc32_of(std::string_view bytes, uint32_t seed) {
  return uint32_t(crc32_z(seed, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

EngineHeader parse_engine_header(std::string_view bytes, uint64_t file_size, const std::string& source) {
  if (bytes.size() < sizeof(kEngineMagic) ||
      std::memcmp(bytes.data(), kEngineMagic, sizeof(kEngineMagic)) != 0)
    fail(source + ": not a Kestrel engine file (no KESTRELE magic); build one with `kestrel build`");
  if (bytes.size() < kEngineHeaderSize)
    fail(source + ": truncated engine file (" + std::to_string(bytes.size()) +
         " bytes, the header alone is " + std::to_string(kEngineHeaderSize) + "); " + rebuild_hint(source));
  EngineHeader h;
  h.format_version = read_le<uint32_t>(bytes, kVersionAt);
  if (h.format_version != kEngineFormatVersion)
    fail(source + ": engine format version " + std::to_string(h.format_version) +
         ", this Kestrel reads version " + std::to_string(kEngineFormatVersion) + "; " +
         rebuild_hint(source));
  if (read_le<uint32_t>(bytes, kHeaderCrcAt) != crc32_of(bytes.substr(0, kHeaderCrcAt)))
    fail(source + ": corrupt engine header (checksum mismatch); " + rebuild_hint(source));
  h.file_size = read_le<uint64_t>(bytes, kFileSizeAt);
  h.index_offset = read_le<uint64_t>(bytes, kIndexOffsetAt);
  h.index_size = read_le<uint64_t>(bytes, kIndexSizeAt);
  h.index_crc32 = read_le<uint32_t>(bytes, kIndexCrcAt);
  if (file_size < h.file_size)
    fail(source + ": truncated engine file (" + std::to_string(file_size) + " of " +
         std::to_string(h.file_size) + " bytes); " + rebuild_hint(source));
  if (file_size > h.file_size)
    fail(source + ": engine file has " + std::to_string(file_size - h.file_size) +
         " unexpected trailing bytes; " + rebuild_hint(source));
  // index_offset + index_size == file_size, written without overflow.
  if (h.index_offset < kEngineHeaderSize || h.index_offset > h.file_size ||
      h.index_size != h.file_size - h.index_offset)
    fail(source + ": corrupt engine header (index out of range); " + rebuild_hint(source));
  return h;
}

bool looks_like_engine_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[sizeof(kEngineMagic)] = {};
  in.read(magic, sizeof(magic));
  return in.gcount() == sizeof(magic) && std::memcmp(magic, kEngineMagic, sizeof(magic)) == 0;
}

namespace {

// Parses the index JSON into sections, checking every range against the data area [64, data_end).
std::map<std::string, EngineSection> parse_engine_index(const nlohmann::json& index, uint64_t data_end,
                                                        const std::string& source) {
  const std::string bad = source + ": corrupt engine index";
  if (!index.is_object() || !index.contains("sections") || !index["sections"].is_array())
    fail(bad + " (no section list); " + rebuild_hint(source));
  std::map<std::string, EngineSection> out;
  for (const auto& s : index["sections"]) {
    if (!s.is_object() || !s.contains("name") || !s["name"].is_string() || !s.contains("offset") ||
        !s["offset"].is_number_unsigned() || !s.contains("size") || !s["size"].is_number_unsigned() ||
        !s.contains("crc32") || !s["crc32"].is_number_unsigned())
      fail(bad + " (a section entry lacks name/offset/size/crc32); " + rebuild_hint(source));
    const std::string name = s["name"].get<std::string>();
    EngineSection sec;
    sec.offset = s["offset"].get<uint64_t>();
    sec.size = s["size"].get<uint64_t>();
    const uint64_t crc = s["crc32"].get<uint64_t>();
    if (crc > 0xffffffffu) fail(bad + " (section '" + name + "' has a crc32 wider than 32 bits)");
    sec.crc32 = uint32_t(crc);
    if (sec.offset < kEngineHeaderSize || sec.offset > data_end || sec.size > data_end - sec.offset)
      fail(bad + " (section '" + name + "' lies outside the file); " + rebuild_hint(source));
    if (sec.offset % kSectionAlignment != 0)
      fail(bad + " (section '" + name + "' is not aligned); " + rebuild_hint(source));
    if (!out.emplace(name, sec).second) fail(bad + " (section '" + name + "' appears twice)");
  }
  return out;
}

}  // namespace

EngineContents parse_engine(std::string_view bytes, const std::string& source, bool verify_sections) {
  EngineContents c;
  c.header = parse_engine_header(bytes, bytes.size(), source);
  const std::string_view index_bytes = bytes.substr(c.header.index_offset, c.header.index_size);
  if (crc32_of(index_bytes) != c.header.index_crc32)
    fail(source + ": corrupt engine index (checksum mismatch); " + rebuild_hint(source));
  nlohmann::json index = nlohmann::json::parse(index_bytes, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) fail(source + ": corrupt engine index (not JSON); " + rebuild_hint(source));
  c.sections = parse_engine_index(index, c.header.index_offset, source);
  if (!index.contains("metadata") || !index["metadata"].is_object())
    fail(source + ": corrupt engine index (no metadata object); " + rebuild_hint(source));
  c.metadata = std::move(index["metadata"]);
  if (verify_sections)
    for (const auto& [name, sec] : c.sections)
      if (crc32_of(bytes.substr(sec.offset, sec.size)) != sec.crc32)
        fail(source + ": section '" + name + "' is corrupt (checksum mismatch); " + rebuild_hint(source));
  return c;
}

EngineFile EngineFile::open(const fs::path& path, bool verify_sections) {
  auto map = std::make_shared<MappedFile>(path);
  EngineContents c = parse_engine(map->view(), path.string(), verify_sections);
  EngineFile f;
  f.header_ = c.header;
  f.metadata_ = std::move(c.metadata);
  f.sections_ = std::move(c.sections);
  f.map_ = std::move(map);
  return f;
}

std::string_view EngineFile::section(const std::string& name) const {
  auto it = sections_.find(name);
  if (it == sections_.end())
    fail(path().string() + ": engine file has no section '" + name + "'; " + rebuild_hint(path().string()));
  return map_->view().substr(it->second.offset, it->second.size);
}

std::string EngineFile::content_id() const {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", header_.index_crc32);
  return buf;
}

// ---- writer
// ---------------------------------------------------------------------------------------------------

EngineFileWriter::EngineFileWriter(const fs::path& destination) : destination_(destination) {
  const fs::path dir = destination.has_parent_path() ? destination.parent_path() : fs::path(".");
  // A hidden temp file in the destination's folder, so the final rename stays on one file system.
  std::string temp_name = destination.filename().string();
  temp_name.insert(temp_name.begin(), '.');
  temp_name.append(".tmp-XXXXXX");
  const std::string pattern = (dir / temp_name).string();
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  fd_ = ::mkstemp(buf.data());
  if (fd_ < 0)
    fail(destination.string() + ": cannot create a file in " + dir.string() + ": " + std::strerror(errno));
  temp_ = buf.data();
  ::fchmod(fd_, 0644);  // mkstemp makes 0600; an engine is as shareable as the checkpoint it came from
  // The header is written last; reserve its space now.
  const unsigned char zeros[kEngineHeaderSize] = {};
  write_all(zeros, sizeof(zeros));
}

EngineFileWriter::~EngineFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void EngineFileWriter::write_all(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail(destination_.string() + ": cannot write the engine file: " +
           (n < 0 ? std::strerror(errno) : "no progress") + " (nothing was written in its place)");
    p += n;
    size -= size_t(n);
    offset_ += uint64_t(n);
  }
}

void EngineFileWriter::pad_to(uint64_t alignment) {
  static const char zeros[kSectionAlignment] = {};
  const uint64_t pad = (alignment - offset_ % alignment) % alignment;
  write_all(zeros, size_t(pad));
}

void EngineFileWriter::begin_section(const std::string& name) {
  if (!current_.empty())
    internal_error("engine writer: section '" + name + "' begun inside '" + current_ + "'");
  if (name.empty() || sections_.count(name))
    internal_error("engine writer: bad or repeated section '" + name + "'");
  pad_to(kSectionAlignment);
  current_ = name;
  current_section_ = EngineSection{offset_, 0, 0};
}

void EngineFileWriter::append(const void* data, size_t size) {
  if (current_.empty()) internal_error("engine writer: append outside a section");
  current_section_.crc32 = uint32_t(crc32_z(current_section_.crc32, static_cast<const Bytef*>(data), size));
  current_section_.size += size;
  write_all(data, size);
}

void EngineFileWriter::end_section() {
  if (current_.empty()) internal_error("engine writer: end_section without begin_section");
  sections_.emplace(current_, current_section_);
  current_.clear();
}

void EngineFileWriter::add_section(const std::string& name, std::string_view bytes) {
  begin_section(name);
  append(bytes.data(), bytes.size());
  end_section();
}

void EngineFileWriter::commit(const nlohmann::json& metadata) {
  if (!current_.empty()) internal_error("engine writer: commit with section '" + current_ + "' open");
  nlohmann::json index;
  index["metadata"] = metadata;
  index["sections"] = nlohmann::json::array();
  for (const auto& [name, s] : sections_)
    index["sections"].push_back({{"name", name}, {"offset", s.offset}, {"size", s.size}, {"crc32", s.crc32}});
  const std::string index_text = index.dump();
  pad_to(kSectionAlignment);
  const uint64_t index_offset = offset_;
  write_all(index_text.data(), index_text.size());

  unsigned char header[kEngineHeaderSize] = {};
  std::memcpy(header, kEngineMagic, sizeof(kEngineMagic));
  write_le<uint32_t>(header, kVersionAt, kEngineFormatVersion);
  write_le<uint64_t>(header, kFileSizeAt, offset_);
  write_le<uint64_t>(header, kIndexOffsetAt, index_offset);
  write_le<uint64_t>(header, kIndexSizeAt, index_text.size());
  write_le<uint32_t>(header, kIndexCrcAt, crc32_of(index_text));
  write_le<uint32_t>(header, kHeaderCrcAt, crc32_of({reinterpret_cast<const char*>(header), kHeaderCrcAt}));
  if (::pwrite(fd_, header, sizeof(header), 0) != ssize_t(sizeof(header)))
    fail(destination_.string() + ": cannot write the engine header: " + std::strerror(errno));
  if (::fsync(fd_) != 0)
    fail(destination_.string() + ": cannot flush the engine file: " + std::strerror(errno));
  if (::close(std::exchange(fd_, -1)) != 0)
    fail(destination_.string() + ": cannot close the engine file: " + std::strerror(errno));
  if (::rename(temp_.c_str(), destination_.c_str()) != 0)
    fail(destination_.string() + ": cannot move the finished engine into place: " + std::strerror(errno));
  committed_ = true;
  // Make the rename itself durable.
  const fs::path dir = destination_.has_parent_path() ? destination_.parent_path() : fs::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace kestrel
