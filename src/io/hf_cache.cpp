#include "io/hf_cache.h"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/model_source.h"

namespace kestrel {

namespace fs = std::filesystem;

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// huggingface_hub runs its cache paths through expanduser; do the same for "~/...".
fs::path expand_user(const std::string& p) {
  if (p == "~" || p.rfind("~/", 0) == 0) {
    const std::string home = env_or_empty("HOME");
    if (!home.empty()) return fs::path(home) / p.substr(p.size() > 1 ? 2 : 1);
  }
  return p;
}

}  // namespace

std::filesystem::path hf_hub_cache_dir() {
  // Same precedence as huggingface_hub (HUGGINGFACE_HUB_CACHE is its older name for HF_HUB_CACHE).
  for (const char* var : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"})
    if (auto v = env_or_empty(var); !v.empty()) return expand_user(v);
  if (auto v = env_or_empty("HF_HOME"); !v.empty()) return expand_user(v) / "hub";
  if (auto v = env_or_empty("XDG_CACHE_HOME"); !v.empty()) return expand_user(v) / "huggingface" / "hub";
  const std::string home = env_or_empty("HOME");
  if (home.empty())
    fail("cannot locate the Hugging Face cache: HOME is not set (set HF_HUB_CACHE or HF_HOME)");
  return fs::path(home) / ".cache" / "huggingface" / "hub";
}

std::optional<std::filesystem::path> find_in_hf_cache(const std::string& repo_id,
                                                      const std::string& revision) {
  if (!hf_cache::is_valid_repo_id(repo_id) || !hf_cache::is_valid_revision(revision)) return std::nullopt;
  return hf_cache::lookup(hf_hub_cache_dir(), repo_id, revision).snapshot;
}

namespace hf_cache {

namespace {

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
}

bool is_valid_name_part(std::string_view s) {
  if (s.empty() || s.size() > 96) return false;
  for (char c : s)
    if (!is_name_char(c)) return false;
  // The Hub forbids these; "--" would also make the cache folder name ambiguous.
  if (s.find("--") != std::string_view::npos || s.find("..") != std::string_view::npos) return false;
  return s.front() != '-' && s.front() != '.' && s.back() != '-' && s.back() != '.';
}

bool exists_noexcept(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);  // follows symlinks: a snapshot link whose blob is gone does not exist
}

bool is_dir_noexcept(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// Reads a small text file; nullopt when it cannot be read or is unreasonably large.
std::optional<std::string> read_small_file(const fs::path& p, size_t limit) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::string s(limit + 1, '\0');
  in.read(s.data(), std::streamsize(s.size()));
  if (in.bad()) return std::nullopt;
  s.resize(size_t(in.gcount()));
  if (s.size() > limit) return std::nullopt;
  return s;
}

std::string trim(std::string s) {
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && is_space(s.back())) s.pop_back();
  size_t i = 0;
  while (i < s.size() && is_space(s[i])) ++i;
  return s.substr(i);
}

// The shards a *.index.json names; nullopt when the index is unreadable or malformed.
std::optional<std::vector<std::string>> index_shards(const fs::path& index) {
  auto text = read_small_file(index, size_t(64) << 20);
  if (!text) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) return std::nullopt;
  std::vector<std::string> shards;
  for (const auto& [tensor, file] : j["weight_map"].items()) {
    if (!file.is_string()) return std::nullopt;
    shards.push_back(file.get<std::string>());
  }
  return shards;
}

// ".name.kestrel-<pid>" next to `path`: a private name to write under before renaming onto `path`.
fs::path temp_sibling(const fs::path& path) {
  std::string name = ".";
  name += path.filename().string();
  name += ".kestrel-";
  name += std::to_string(::getpid());
  return path.parent_path() / name;
}

void create_dirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir.string() + ": cannot create folder: " + ec.message());
}

}  // namespace

bool is_commit_hash(std::string_view s) {
  if (s.size() != 40) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

bool is_valid_repo_id(std::string_view id) {
  const size_t slash = id.find('/');
  if (slash == std::string_view::npos) return is_valid_name_part(id);
  return is_valid_name_part(id.substr(0, slash)) && is_valid_name_part(id.substr(slash + 1));
}

bool is_valid_revision(std::string_view rev) {
  if (rev.empty() || rev.size() > 255 || rev.front() == '/' || rev.back() == '/') return false;
  if (rev.find("..") != std::string_view::npos || rev.find("//") != std::string_view::npos) return false;
  for (char c : rev)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') return false;
  return true;
}

bool is_safe_relative_path(std::string_view name) {
  if (name.empty() || name.size() > 1024 || name.front() == '/') return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    const std::string_view part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  for (char c : name)
    if (static_cast<unsigned char>(c) < 0x20 || c == '\\') return false;
  return true;
}

std::string repo_folder_name(std::string_view repo_id) {
  std::string out = "models";
  size_t start = 0;
  while (true) {
    const size_t slash = repo_id.find('/', start);
    out += "--";
    out += repo_id.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (slash == std::string_view::npos) return out;
    start = slash + 1;
  }
}

fs::path repo_dir(const fs::path& cache, std::string_view repo_id) {
  return cache / repo_folder_name(repo_id);
}

Lookup lookup(const fs::path& cache, std::string_view repo_id, std::string_view revision) {
  Lookup r;
  const fs::path repo = repo_dir(cache, repo_id);
  if (!is_dir_noexcept(repo)) {
    r.problem = "no cache entry " + repo.string();
    return r;
  }
  if (is_commit_hash(revision)) {
    r.commit = std::string(revision);
  } else {
    const fs::path ref = repo / "refs" / std::string(revision);
    if (!exists_noexcept(ref)) {
      r.problem =
          "revision '" + std::string(revision) + "' was never fetched (" + ref.string() + " is missing)";
      return r;
    }
    auto text = read_small_file(ref, 256);
    r.commit = text ? trim(*text) : std::string();
    if (!is_commit_hash(r.commit)) {
      r.problem = ref.string() + " does not hold a commit hash";
      r.commit.clear();
      return r;
    }
  }
  const fs::path snap = repo / "snapshots" / r.commit;
  if (!is_dir_noexcept(snap)) {
    r.problem = "snapshot " + snap.string() + " is missing";
    return r;
  }
  if (!exists_noexcept(snap / "config.json")) {
    r.problem = "snapshot " + snap.string() + " has no config.json (an incomplete download?)";
    return r;
  }
  r.snapshot = snap;
  return r;
}

bool has_weights(const fs::path& snapshot) {
  for (const char* single : {"model.safetensors", "pytorch_model.bin"})
    if (exists_noexcept(snapshot / single)) return true;
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (!exists_noexcept(snapshot / index)) continue;
    auto shards = index_shards(snapshot / index);
    if (!shards || shards->empty()) continue;
    bool all = true;
    for (const auto& s : *shards) all = all && is_safe_relative_path(s) && exists_noexcept(snapshot / s);
    if (all) return true;
  }
  return false;
}

fs::path blob_path(const fs::path& repo, std::string_view etag) {
  return repo / "blobs" / std::string(etag);
}

fs::path lock_path(const fs::path& cache, std::string_view repo_id, std::string_view etag) {
  return cache / ".locks" / repo_folder_name(repo_id) / (std::string(etag) + ".lock");
}

void link_blob(const fs::path& repo, std::string_view commit, std::string_view file, std::string_view etag) {
  const fs::path link = repo / "snapshots" / std::string(commit) / std::string(file);
  create_dirs(link.parent_path());
  // Relative target, as huggingface_hub writes it, so the cache folder can be moved as a whole.
  const fs::path target = blob_path(repo, etag).lexically_relative(link.parent_path());
  // Symlink under a temporary name, then rename over the final name: the pointer appears whole or not at all.
  const fs::path tmp = temp_sibling(link);
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_symlink(target, tmp, ec);
  if (ec) fail(link.string() + ": cannot create symlink to " + target.string() + ": " + ec.message());
  fs::rename(tmp, link, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail(link.string() + ": cannot move symlink into place: " + ec.message());
  }
}

void write_ref(const fs::path& repo, std::string_view revision, std::string_view commit) {
  if (revision == commit) return;
  write_file_atomically(repo / "refs" / std::string(revision), commit);
}

void mark_missing(const fs::path& repo, std::string_view commit, std::string_view file) {
  const fs::path marker = repo / ".no_exist" / std::string(commit) / std::string(file);
  std::error_code ec;
  fs::create_directories(marker.parent_path(), ec);
  if (ec) return;  // only a hint for later offline runs: not worth failing a download over
  std::ofstream(marker, std::ios::app);
}

void write_file_atomically(const fs::path& path, std::string_view contents) {
  create_dirs(path.parent_path());
  const fs::path tmp = temp_sibling(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), std::streamsize(contents.size()));
    out.flush();
    if (!out) fail(tmp.string() + ": cannot write: " + std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail(path.string() + ": cannot write: " + ec.message());
  }
}

}  // namespace hf_cache
}  // namespace kestrel
