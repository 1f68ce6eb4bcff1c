// resolve_model: MODEL as typed by the user -> a local folder holding config.json and the weights.
#include "io/model_source.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string_view>
#include <system_error>

#include "core/error.h"
#include "io/engine_file.h"
#include "io/engine_unpack.h"
#include "io/hf_cache.h"
#include "io/hub_download.h"

namespace kestrel {

namespace fs = std::filesystem;

namespace {

// huggingface_hub's reading of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE.
bool env_offline() {
  for (const char* var : {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}) {
    const char* v = std::getenv(var);
    if (!v) continue;
    std::string s = v;
    for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
    if (s == "1" || s == "ON" || s == "YES" || s == "TRUE") return true;
  }
  return false;
}

// What the user typed is meant as a path, not a name: report a missing folder rather than a Hub lookup.
bool looks_like_path(std::string_view s) {
  return s.front() == '/' || s.front() == '~' || s.rfind("./", 0) == 0 || s.rfind("../", 0) == 0 ||
         s == "." || s == ".." || s.back() == '/' || s.find('\\') != std::string_view::npos ||
         std::count(s.begin(), s.end(), '/') > 1;
}

bool is_builtin_name(std::string_view s) {
  if (s.empty() || s.size() > 128 || s.front() == '.') return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

// Kestrel's data folder (the repository's assets/): KESTREL_ASSETS_DIR, else the first folder above the
// running executable that holds assets/models (a build tree inside the repository, or an install prefix).
std::optional<fs::path> assets_dir() {
  if (const char* v = std::getenv("KESTREL_ASSETS_DIR"); v && *v) return fs::path(v);
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return std::nullopt;
  for (fs::path dir = exe.parent_path(); !dir.empty(); dir = dir.parent_path()) {
    if (fs::is_directory(dir / "assets" / "models", ec)) return dir / "assets";
    if (dir == dir.root_path()) break;
  }
  return std::nullopt;
}

// A cached snapshot can serve the request without the network: it holds the requested files, or, for the
// default list, loadable weights (a cache filled by AutoConfig alone has config.json and nothing else).
bool snapshot_serves(const fs::path& snapshot, const ResolveOptions& opts) {
  if (opts.files.empty()) return hf_cache::has_weights(snapshot);
  std::error_code ec;
  for (const auto& f : opts.files)
    if (!hf_cache::is_safe_relative_path(f) || !fs::exists(snapshot / f, ec)) return false;
  return true;
}

fs::path resolve_local_folder(const std::string& spec, const fs::file_status& st) {
  if (!fs::is_directory(st))
    fail(spec + ": is a file, not a model folder (give the folder that holds config.json and the weights)");
  std::error_code ec;
  if (!fs::exists(fs::path(spec) / "config.json", ec))
    fail(spec + ": folder has no config.json (not a Hugging Face model folder)");
  const fs::path abs = fs::absolute(spec, ec);
  return ec ? fs::path(spec) : abs.lexically_normal();
}

}  // namespace

std::optional<std::filesystem::path> find_builtin_model(const std::string& name) {
  if (!is_builtin_name(name)) return std::nullopt;
  const auto assets = assets_dir();
  if (!assets) return std::nullopt;
  const fs::path dir = *assets / "models" / name;
  std::error_code ec;
  if (!fs::exists(dir / "config.json", ec)) return std::nullopt;
  return dir;
}

std::filesystem::path resolve_model(const std::string& spec, const ResolveOptions& opts) {
  if (spec.empty())
    fail("no model given (a folder, a Hugging Face model id such as gpt2, or a built-in name)");
  if (!hf_cache::is_valid_revision(opts.revision))
    fail("--revision '" + opts.revision + "' is not a valid revision");

  // 1. A local folder.
  std::error_code ec;
  const fs::file_status st = fs::status(spec, ec);
  // An engine file (`kestrel build`): its config and tokenizer files, unpacked, stand in for the folder.
  if (fs::is_regular_file(st) && (looks_like_engine_file(spec) || fs::path(spec).extension() == ".kestrel"))
    return unpack_engine(spec);  // a damaged or foreign .kestrel file gets the engine reader's error
  if (fs::exists(st)) return resolve_local_folder(spec, st);
  if (looks_like_path(spec)) fail(spec + ": no such folder");
  if (!hf_cache::is_valid_repo_id(spec))
    fail("'" + spec + "' is neither a folder, a built-in model nor a valid Hugging Face model id (org/name)");

  // 2. The Hugging Face cache.
  const fs::path cache = hf_hub_cache_dir();
  const hf_cache::Lookup cached = hf_cache::lookup(cache, spec, opts.revision);
  const bool offline = opts.offline || env_offline();
  if (cached.snapshot && (offline || snapshot_serves(*cached.snapshot, opts))) return *cached.snapshot;

  // 3. Kestrel's built-in models.
  if (auto builtin = find_builtin_model(spec)) return *builtin;

  // 4. The Hub.
  if (offline)
    fail("model '" + spec + "' is not in the Hugging Face cache (" + cached.problem +
         ") and offline mode is on (HF_HUB_OFFLINE): download it once online, or give a local folder");
  return download_from_hub(spec, opts, cache);
}

}  // namespace kestrel
