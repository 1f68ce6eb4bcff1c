// Unpacking an engine's small files into the cache (see engine_unpack.h).
#include "io/engine_unpack.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "core/error.h"
#include "io/engine_file.h"

namespace kestrel {

namespace fs = std::filesystem;

fs::path kestrel_cache_dir() {
  if (const char* k = std::getenv("KESTREL_CACHE"); k && *k) return k;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "kestrel";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".cache" / "kestrel";
  fail("cannot find a cache folder: set KESTREL_CACHE, XDG_CACHE_HOME or HOME");
}

namespace {

void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  out.close();
  if (!out) fail(path.string() + ": cannot write (unpacking an engine file)");
}

}  // namespace

fs::path unpack_engine(const fs::path& engine) {
  const fs::path absolute = fs::absolute(engine);
  // The weights are checked when the model loads; here only the sections unpacked.
  const EngineFile file = EngineFile::open(absolute, /*verify_sections=*/false);
  // Keyed by content and location: the link must point at this very file.
  const std::string key = file.content_id() + "-" + [&] {
    char buf[9];
    std::snprintf(buf, sizeof(buf), "%08x", crc32_of(absolute.string()));
    return std::string(buf);
  }();
  const fs::path root = kestrel_cache_dir() / "engines" / "unpacked";
  const fs::path dir = root / key;
  if (fs::is_symlink(dir / kUnpackedEngineLink)) return dir;

  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) fail(root.string() + ": cannot create the cache folder: " + ec.message());
  // Build in a private folder, then rename: a concurrent or interrupted unpack never leaves a half folder.
  std::string pattern = (root / (key + ".tmp-XXXXXX")).string();
  if (!::mkdtemp(pattern.data())) fail(root.string() + ": cannot create a folder in the cache");
  const fs::path temp = pattern;
  try {
    for (const auto& [name, sec] : file.sections()) {
      const bool small =
          name == "config.json" || name == "generation_config.json" || name.rfind("tokenizer/", 0) == 0;
      if (!small) continue;
      const std::string_view bytes = file.section(name);
      if (crc32_of(bytes) != sec.crc32)
        fail(absolute.string() + ": section '" + name + "' is corrupt (checksum mismatch); rebuild it with " +
             "`kestrel build MODEL -o " + absolute.string() + "`");
      const std::string filename = name.rfind("tokenizer/", 0) == 0 ? name.substr(10) : name;
      if (filename.empty() || filename.find('/') != std::string::npos || filename[0] == '.')
        fail(absolute.string() + ": engine section '" + name + "' has an unsafe file name");
      write_file(temp / filename, bytes);
    }
    fs::create_symlink(absolute, temp / kUnpackedEngineLink);
    fs::rename(temp, dir, ec);
    if (ec && !fs::is_symlink(dir / kUnpackedEngineLink))  // losing a race to another unpack is fine
      fail(dir.string() + ": cannot move the unpacked engine files into place: " + ec.message());
    if (ec) fs::remove_all(temp);
  } catch (...) {
    fs::remove_all(temp, ec);
    throw;
  }
  return dir;
}

std::optional<fs::path> unpacked_engine_file(const fs::path& dir) {
  std::error_code ec;
  const fs::path link = dir / kUnpackedEngineLink;
  if (!fs::is_directory(dir, ec) || !fs::is_symlink(link, ec)) return std::nullopt;
  const fs::path target = fs::read_symlink(link, ec);
  if (ec) fail(link.string() + ": cannot read the link to the engine file: " + ec.message());
  if (!fs::exists(target, ec)) fail(link.string() + ": the engine file " + target.string() + " is gone");
  return target;
}

}  // namespace kestrel
