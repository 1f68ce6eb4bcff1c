#pragma once
// The Hugging Face hub cache layout, read and written exactly as huggingface_hub does, so that Kestrel and
// Python (transformers, huggingface_hub) share one cache:
//   <cache>/models--org--name/
//     blobs/<etag>                         file contents, named by the Hub's ETag (sha256 for LFS files)
//     snapshots/<commit>/<file>            symlink -> ../../blobs/<etag>
//     refs/<revision>                      the commit a branch or tag pointed to when last fetched
//     .no_exist/<commit>/<file>            empty marker: the Hub said the file does not exist at that commit
//   <cache>/.locks/models--org--name/<etag>.lock   taken while a blob is written
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kestrel::hf_cache {

namespace fs = std::filesystem;

bool is_commit_hash(std::string_view s);  // 40 lowercase hex digits
// "name" or "org/name" with the Hub's characters (letters, digits, '-', '_', '.'), no "--" or ".." inside.
bool is_valid_repo_id(std::string_view id);
// A branch, tag or commit usable both in a URL and under refs/: no "..", no leading '/', no control
// characters.
bool is_valid_revision(std::string_view rev);
// A repository-relative file name that stays inside the snapshot ("a/b.bin"; no "..", no absolute path).
bool is_safe_relative_path(std::string_view name);

std::string repo_folder_name(std::string_view repo_id);  // "org/name" -> "models--org--name"
fs::path repo_dir(const fs::path& cache, std::string_view repo_id);

// The result of looking for a revision of a repository in the cache.
struct Lookup {
  std::optional<fs::path> snapshot;  // set when snapshots/<commit>/config.json exists
  std::string commit;                // the commit the revision resolved to, when known
  std::string problem;               // why there is no snapshot, for error messages
};
Lookup lookup(const fs::path& cache, std::string_view repo_id, std::string_view revision);

// True when the snapshot holds loadable weights: model.safetensors or pytorch_model.bin, or an index file and
// every shard it names.
bool has_weights(const fs::path& snapshot);

fs::path blob_path(const fs::path& repo, std::string_view etag);
fs::path lock_path(const fs::path& cache, std::string_view repo_id, std::string_view etag);
// snapshots/<commit>/<file> -> ../../blobs/<etag> (relative, as huggingface_hub writes it); replaces any
// existing entry atomically.
void link_blob(const fs::path& repo, std::string_view commit, std::string_view file, std::string_view etag);
// refs/<revision> = commit (no trailing newline, as huggingface_hub writes it); nothing when revision is the
// commit itself.
void write_ref(const fs::path& repo, std::string_view revision, std::string_view commit);
void mark_missing(const fs::path& repo, std::string_view commit, std::string_view file);

// Writes `contents` to `path` through a temporary file and a rename, so readers never see a partial file.
void write_file_atomically(const fs::path& path, std::string_view contents);

}  // namespace kestrel::hf_cache
