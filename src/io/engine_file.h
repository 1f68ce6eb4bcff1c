#pragma once
// Engine files (`kestrel build`): one memory-mappable file holding everything needed to run a model.
// This layer knows only the container: named, checksummed, aligned sections plus a JSON metadata object.
// What the sections mean (config, tokenizer files, plan, packed weights) is runtime/engine_io's business.
//
// Layout (little-endian):
//   [0, 64)        header: magic "KESTRELE", format version, file size, index offset/size/crc32, header crc32
//   sections       each starts on a kSectionAlignment boundary, so a float section can be used in place
//   index          JSON {"metadata": {...}, "sections": [{"name", "offset", "size", "crc32"}, ...]}
// The index comes last so sections can be streamed to disk one at a time; the header is written last of all.
// Every read is bounds-checked; any mismatch is a kestrel::Error that names the file and says to rebuild it.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/mapped_file.h"

namespace kestrel {

inline constexpr char kEngineMagic[8] = {'K', 'E', 'S', 'T', 'R', 'E', 'L', 'E'};
inline constexpr uint32_t kEngineFormatVersion = 1;
inline constexpr size_t kEngineHeaderSize = 64;
inline constexpr size_t kSectionAlignment = 64;  // cache line: SIMD loads of packed weights stay aligned

struct EngineHeader {
  uint32_t format_version = 0;
  uint64_t file_size = 0;
  uint64_t index_offset = 0, index_size = 0;
  uint32_t index_crc32 = 0;
};

struct EngineSection {
  uint64_t offset = 0, size = 0;
  uint32_t crc32 = 0;
};

// Parses and checks the fixed header of `bytes` (the whole file or at least its first 64 bytes, with
// `file_size` the real size): magic, header checksum, format version, sizes that fit in the file.
// `source` names the file in errors. Exposed for the fuzzer and for cheap "is this an engine?" checks.
EngineHeader parse_engine_header(std::string_view bytes, uint64_t file_size, const std::string& source);

// Header, index and (with verify_sections) every section's crc32 of a whole engine file in memory. Every
// returned section lies inside `bytes`. EngineFile::open is this over a mapping; the fuzzer calls it
// directly.
struct EngineContents {
  EngineHeader header;
  nlohmann::json metadata;
  std::map<std::string, EngineSection> sections;
};
EngineContents parse_engine(std::string_view bytes, const std::string& source, bool verify_sections);

// True when the file exists and starts with the engine magic (it may still be corrupt).
bool looks_like_engine_file(const std::filesystem::path& path);

// A mapped, verified engine file. Section views stay valid while any copy of the shared map is alive.
class EngineFile {
 public:
  // Maps the file and checks header, index and (with verify_sections) every section's crc32.
  static EngineFile open(const std::filesystem::path& path, bool verify_sections = true);

  const std::filesystem::path& path() const { return map_->path(); }
  const nlohmann::json& metadata() const { return metadata_; }
  const std::map<std::string, EngineSection>& sections() const { return sections_; }
  bool has(const std::string& name) const { return sections_.count(name) != 0; }
  std::string_view section(const std::string& name) const;  // throws naming the section and the file
  // Keeps the mapping alive for views handed out to others (e.g. packed weights used in place).
  std::shared_ptr<const MappedFile> mapping() const { return map_; }
  // A short id of the content: the index checksum, which covers every section's checksum, as 8 hex digits.
  std::string content_id() const;

 private:
  std::shared_ptr<const MappedFile> map_;
  EngineHeader header_;
  nlohmann::json metadata_;
  std::map<std::string, EngineSection> sections_;
};

// Writes an engine file atomically: sections stream into a temp file next to the destination; commit() writes
// index and header, fsyncs and renames it into place. If anything fails (disk full, a file-size limit, an
// exception while building) the temp file is removed and the destination is left untouched.
class EngineFileWriter {
 public:
  explicit EngineFileWriter(const std::filesystem::path& destination);
  ~EngineFileWriter();  // removes the temp file unless commit() succeeded
  EngineFileWriter(const EngineFileWriter&) = delete;
  EngineFileWriter& operator=(const EngineFileWriter&) = delete;

  // Streams one section: begin, any number of appends, end. Names must be unique.
  void begin_section(const std::string& name);
  void append(const void* data, size_t size);
  void end_section();
  void add_section(const std::string& name, std::string_view bytes);

  uint64_t bytes_written() const { return offset_; }
  void commit(const nlohmann::json& metadata);

 private:
  void write_all(const void* data, size_t size);
  void pad_to(uint64_t alignment);
  std::filesystem::path destination_, temp_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t offset_ = 0;
  std::string current_;  // name of the open section, empty when none
  EngineSection current_section_;
  std::map<std::string, EngineSection> sections_;
};

// crc32 (zlib) of a byte range, for callers that checksum their own data (e.g. the engine cache key).
uint32_t crc32_of(std::string_view bytes, uint32_t seed = 0);

}  // namespace kestrel
