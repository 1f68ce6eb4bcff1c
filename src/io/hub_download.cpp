#include "io/hub_download.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/progress.h"
#include "io/hf_cache.h"
#include "io/http.h"

namespace kestrel {

namespace fs = std::filesystem;

std::string hf_endpoint() {
  const char* v = std::getenv("HF_ENDPOINT");
  std::string e = v && *v ? v : "https://huggingface.co";
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

namespace {

constexpr int kAttempts = 5;  // per request; waits 0.5, 1, 2, 4 s between them

// Files fetched when they exist; their absence is normal.
const char* const kOptionalFiles[] = {"generation_config.json",
                                      "tokenizer.json",
                                      "tokenizer_config.json",
                                      "special_tokens_map.json",
                                      "added_tokens.json",
                                      "vocab.json",
                                      "merges.txt",
                                      "spiece.model"};
// Weight formats in the order transformers prefers them; the first one present is fetched.
const char* const kWeightFiles[] = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                    "pytorch_model.bin.index.json"};

std::string hf_token() {
  for (const char* var : {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}) {
    const char* v = std::getenv(var);
    if (!v) continue;
    std::string t = v;
    t.erase(std::remove_if(t.begin(), t.end(), [](unsigned char c) { return std::isspace(c); }), t.end());
    if (!t.empty()) return t;
  }
  return {};
}

// "W/\"abc\"" -> "abc", as huggingface_hub normalises it.
std::string normalize_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  e.erase(std::remove(e.begin(), e.end(), '"'), e.end());
  return e;
}

// The etag becomes a file name under blobs/: keep it to the characters a Hub uses.
bool is_safe_etag(const std::string& e) {
  if (e.empty() || e.size() > 128 || e.front() == '.') return false;
  return std::all_of(e.begin(), e.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '_' || c == '.'; });
}

std::optional<uint64_t> parse_size(const std::string& s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); }))
    return std::nullopt;
  return std::strtoull(s.c_str(), nullptr, 10);
}

uint64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : uint64_t(n);
}

// What a HEAD request says about one file at one revision.
struct FileMeta {
  bool exists = false;
  std::string commit, etag;
  std::optional<uint64_t> size;
};

// An exclusive flock on huggingface_hub's lock file for a blob, so Kestrel and Python never write one blob at
// the same time.
class BlobLock {
 public:
  explicit BlobLock(const fs::path& path) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path.string() + ": cannot create lock file: " + std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0)
      if (errno != EINTR) fail(path.string() + ": cannot lock: " + std::strerror(errno));
  }
  ~BlobLock() { ::close(fd_); }  // closing releases the lock
  BlobLock(const BlobLock&) = delete;
  BlobLock& operator=(const BlobLock&) = delete;

 private:
  int fd_ = -1;
};

class HubDownloader {
 public:
  HubDownloader(std::string repo_id, const ResolveOptions& opts, fs::path cache)
      : repo_id_(std::move(repo_id)),
        opts_(opts),
        cache_(std::move(cache)),
        repo_(hf_cache::repo_dir(cache_, repo_id_)),
        endpoint_(hf_endpoint()),
        token_(hf_token()) {
    if (!token_.empty()) headers_.push_back("Authorization: Bearer " + token_);
  }

  fs::path run() {
    // config.json first: it tells whether the model exists and which commit the revision is at. Every other
    // file is then fetched at that commit, so a push during the download cannot mix two versions.
    const FileMeta config = head_file("config.json", opts_.revision);
    if (!config.exists && !config.commit.empty())
      fail("model '" + repo_id_ + "' on the Hub has no config.json (not a transformers model?)");
    if (!config.exists) fail("model '" + repo_id_ + "' not found on the Hub (" + endpoint_ + ")");
    commit_ = config.commit;
    snapshot_ = repo_ / "snapshots" / commit_;
    if (!opts_.quiet)
      std::fprintf(stderr, "kestrel: downloading %s (%s at %s) into %s\n", repo_id_.c_str(),
                   opts_.revision.c_str(), commit_.substr(0, 12).c_str(), cache_.string().c_str());

    if (opts_.files.empty()) {
      for (const char* f : kOptionalFiles) fetch(f, /*required=*/false);
      fetch_weights();
    } else {
      for (const auto& f : opts_.files)
        if (f != "config.json") fetch(f, /*required=*/true);
    }
    // Last: the snapshot counts as complete once config.json is in it.
    if (!present(config_name_)) store(config_name_, config);
    hf_cache::write_ref(repo_, opts_.revision, commit_);
    return snapshot_;
  }

 private:
  const std::string config_name_ = "config.json";

  bool present(const std::string& file) const {
    std::error_code ec;
    return fs::exists(snapshot_ / file, ec);
  }

  std::string url(const std::string& file, const std::string& revision) const {
    std::string u = endpoint_ + "/" + repo_id_ + "/resolve/" + http::escape_segment(revision) + "/";
    size_t start = 0;
    while (true) {
      const size_t slash = file.find('/', start);
      u += http::escape_segment(
          file.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
      if (slash == std::string::npos) return u;
      u += "/";
      start = slash + 1;
    }
  }

  // The absolute URL a redirect points to when it stays on the Hub's host; nullopt otherwise.
  std::optional<std::string> same_hub_target(const std::string& location) const {
    const size_t scheme = endpoint_.find("://");
    const size_t path = scheme == std::string::npos ? std::string::npos : endpoint_.find('/', scheme + 3);
    const std::string origin = endpoint_.substr(0, path);  // scheme://host[:port]
    if (location.rfind("/", 0) == 0 && location.rfind("//", 0) != 0) return origin + location;
    if (location.rfind(origin + "/", 0) == 0) return location;
    return std::nullopt;
  }

  // Sleeps 0.5 s, 1 s, 2 s, ... before attempt `attempt + 1`, saying why (through the file's progress bar
  // when there is one, so the message does not land in the middle of the bar).
  void wait_before_retry(int attempt, const std::string& what, const http::Response& r,
                         Progress* progress = nullptr) const {
    const auto delay = std::chrono::milliseconds(500 << attempt);
    char secs[16];
    std::snprintf(secs, sizeof secs, "%.1fs", double(delay.count()) / 1000);
    const std::string msg = "kestrel: " + what + ": " + r.describe() + "; retrying in " + secs;
    if (progress)
      progress->note(msg);
    else if (!opts_.quiet)
      std::fprintf(stderr, "%s\n", msg.c_str());
    std::this_thread::sleep_for(delay);
  }

  // An HTTP error that ends the download, as a one-line message naming the model and the file.
  [[noreturn]] void fail_http(const std::string& file, const http::Response& r) const {
    const std::string code = r.header("x-error-code");
    if (r.status == 401 || r.status == 403) {
      if (code == "GatedRepo")
        fail("model '" + repo_id_ +
             "' is gated: accept its terms on the Hub, then set HF_TOKEN to a token of that account");
      if (token_.empty())
        fail("model '" + repo_id_ + "' needs authentication: set HF_TOKEN (or check the model id; HTTP " +
             std::to_string(r.status) + ")");
      fail("model '" + repo_id_ + "': the Hub refused HF_TOKEN (HTTP " + std::to_string(r.status) +
           "): check that the token is valid and has access to this model");
    }
    if (code == "RevisionNotFound")
      fail("model '" + repo_id_ + "' has no revision '" + opts_.revision + "' on the Hub");
    if (r.status == 404 && (code == "RepoNotFound" || file == config_name_))
      fail("model '" + repo_id_ + "' not found on the Hub (" + endpoint_ + ")");
    std::string msg = "model '" + repo_id_ + "': downloading " + file + " failed: " + r.describe();
    if (r.retryable) msg += " (after " + std::to_string(kAttempts) + " attempts)";
    // No answer at all: perhaps there is no network; the cache may still serve other models.
    if (r.status == 0) msg += "; without a network, set HF_HUB_OFFLINE=1 to use only the cache";
    fail(msg);
  }

  FileMeta head_file(const std::string& file, const std::string& revision) {
    std::string u = url(file, revision);
    http::Response r;
    for (int attempt = 0, redirects = 0;;) {
      r = http::head(u, headers_);
      // A renamed repository answers with a redirect to its new name on the same Hub: follow it. A redirect
      // to another host (a CDN) is the answer itself: its headers carry the file's metadata, and the token
      // must not follow it. huggingface_hub draws the same line.
      if (r.transport_error.empty() && r.status >= 300 && r.status < 400 && ++redirects <= 5) {
        if (auto next = same_hub_target(r.header("location"))) {
          u = *next;
          continue;
        }
      }
      if (r.retryable && ++attempt < kAttempts) {
        wait_before_retry(attempt - 1, repo_id_ + ": " + file, r);
        continue;
      }
      break;
    }
    FileMeta m;
    m.commit = r.header("x-repo-commit");
    if (r.status == 404 && r.header("x-error-code") == "EntryNotFound") return m;
    if (r.status == 404 && file != config_name_ && r.header("x-error-code").empty()) return m;
    if (!r.transport_error.empty() || r.status < 200 || r.status >= 400) fail_http(file, r);

    m.exists = true;
    m.etag = normalize_etag(r.header("x-linked-etag").empty() ? r.header("etag") : r.header("x-linked-etag"));
    m.size = parse_size(r.header("x-linked-size"));
    if (!m.size && r.status < 300) m.size = parse_size(r.header("content-length"));
    if (!hf_cache::is_commit_hash(m.commit))
      fail("model '" + repo_id_ + "': " + u +
           " answered without a valid X-Repo-Commit header (is HF_ENDPOINT=" + endpoint_ +
           " a Hugging Face Hub?)");
    if (!is_safe_etag(m.etag))
      fail("model '" + repo_id_ + "': " + u +
           " answered without a usable ETag header (is HF_ENDPOINT=" + endpoint_ + " a Hugging Face Hub?)");
    if (!commit_.empty() && m.commit != commit_)
      fail("model '" + repo_id_ + "': the Hub answered " + file + " from commit " + m.commit +
           " instead of " + commit_);
    return m;
  }

  // Fetches one file at commit_ into the cache unless the snapshot has it. Returns whether it exists.
  bool fetch(const std::string& file, bool required) {
    if (!hf_cache::is_safe_relative_path(file))
      fail("model '" + repo_id_ + "': refusing file name '" + file + "' (it would leave the model folder)");
    if (present(file)) return true;
    const FileMeta m = head_file(file, commit_);
    if (!m.exists) {
      if (required) fail("model '" + repo_id_ + "' has no file '" + file + "' on the Hub");
      hf_cache::mark_missing(repo_, commit_, file);
      return false;
    }
    store(file, m);
    return true;
  }

  void fetch_weights() {
    for (const char* f : kWeightFiles) {
      if (!fetch(f, /*required=*/false)) continue;
      const std::string name = f;
      if (name.size() > 11 && name.compare(name.size() - 11, 11, ".index.json") == 0)
        for (const auto& shard : shards_of(snapshot_ / name)) fetch(shard, /*required=*/true);
      return;
    }
    fail("model '" + repo_id_ +
         "' has no weights Kestrel can read on the Hub (looked for model.safetensors, "
         "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)");
  }

  std::set<std::string> shards_of(const fs::path& index) const {
    std::ifstream in(index, std::ios::binary);
    const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index.string() + ": not a weight index (expected a JSON object with a \"weight_map\" object)");
    std::set<std::string> shards;
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail(index.string() + ": weight_map[\"" + tensor + "\"] is not a file name");
      shards.insert(file.get<std::string>());
    }
    if (shards.empty()) fail(index.string() + ": weight_map is empty");
    return shards;
  }

  // Puts the file's blob in the cache (downloading it if needed) and links it into the snapshot.
  void store(const std::string& file, const FileMeta& m) {
    const fs::path blob = hf_cache::blob_path(repo_, m.etag);
    if (!complete_blob(blob, m.size)) {
      BlobLock lock(hf_cache::lock_path(cache_, repo_id_, m.etag));
      if (!complete_blob(blob, m.size)) download_blob(file, m, blob);  // another process may have finished it
    }
    hf_cache::link_blob(repo_, commit_, file, m.etag);
  }

  static bool complete_blob(const fs::path& blob, std::optional<uint64_t> size) {
    std::error_code ec;
    if (!fs::is_regular_file(blob, ec)) return false;
    return !size || file_size_or_zero(blob) == *size;
  }

  void download_blob(const std::string& file, const FileMeta& m, const fs::path& blob) {
    std::error_code ec;
    fs::create_directories(blob.parent_path(), ec);
    if (ec) fail(blob.parent_path().string() + ": cannot create folder: " + ec.message());
    const fs::path partial = blob.string() + ".incomplete";
    uint64_t have = file_size_or_zero(partial);
    if (m.size && have > *m.size) have = 0;  // not a prefix of this file: start over

    Progress progress(repo_id_ + ": " + file, m.size.value_or(0), Progress::Unit::Bytes,
                      opts_.quiet ? Progress::Style::Quiet : Progress::Style::Auto, have);
    http::FileTransfer callbacks{[&](uint64_t n) { progress.update(n); },
                                 [&](uint64_t n) { progress.reset(n); }};
    const std::string u = url(file, commit_);
    for (int attempt = 0;;) {
      if (m.size && have == *m.size) break;  // an earlier run got every byte but stopped before the rename
      http::Response r = http::get_to_file(u, headers_, partial.string(), have, callbacks);
      have = file_size_or_zero(partial);
      if (r.ok() && m.size && have != *m.size) {
        r.transport_error = "got " + std::to_string(have) + " of " + std::to_string(*m.size) + " bytes";
        r.retryable = have < *m.size;
        if (have > *m.size) have = 0;
      }
      if (r.ok()) break;
      if (r.transport_error.empty() && r.status == 416) {  // our partial file does not fit the server's file
        have = 0;
        r.retryable = true;
      }
      if (!r.retryable || ++attempt >= kAttempts) fail_http(file, r);
      wait_before_retry(attempt - 1, repo_id_ + ": " + file, r, &progress);
    }
    progress.update(have);
    fs::rename(partial, blob, ec);
    if (ec) fail(blob.string() + ": cannot move the finished download into place: " + ec.message());
    progress.finish();
  }

  std::string repo_id_;
  ResolveOptions opts_;
  fs::path cache_, repo_;
  std::string endpoint_, token_;
  std::vector<std::string> headers_;
  std::string commit_;
  fs::path snapshot_;
};

}  // namespace

fs::path download_from_hub(const std::string& repo_id, const ResolveOptions& opts, const fs::path& cache) {
  return HubDownloader(repo_id, opts, cache).run();
}

}  // namespace kestrel
