#pragma once
// Turns what the user typed as MODEL into a local folder holding the checkpoint.
// Order for a name: an existing local folder, the Hugging Face cache, Kestrel's built-in models, the Hub.
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace kestrel {

struct ResolveOptions {
  std::string revision = "main";
  bool offline = false;  // also set by HF_HUB_OFFLINE=1
  bool quiet = false;    // no progress bar
  // Files to fetch from the Hub; empty means Kestrel's default list (config, generation config, weights,
  // tokenizer files), with weight shards discovered from the index file.
  std::vector<std::string> files;
};

// The HF hub cache folder: HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub.
std::filesystem::path hf_hub_cache_dir();

// models--org--name/snapshots/<rev>/ in the cache, if a snapshot exists for the revision (refs/<rev> or a
// commit hash).
std::optional<std::filesystem::path> find_in_hf_cache(const std::string& repo_id, const std::string& revision);

// Folder of a built-in default model (assets/models/<name>), if `name` is one.
std::optional<std::filesystem::path> find_builtin_model(const std::string& name);

// Resolves MODEL; downloads into the HF cache layout if needed. Throws kestrel::Error with a clear message.
std::filesystem::path resolve_model(const std::string& spec, const ResolveOptions& opts = {});

}  // namespace kestrel
