// Model sources: the Hugging Face cache layout (lookup, env precedence, malformed entries), built-in models,
// resolve_model's order and errors, and the progress line. Hub downloads are tested in test_hub_download.py.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "core/error.h"
#include "core/progress.h"
#include "io/hf_cache.h"
#include "io/model_source.h"

namespace fs = std::filesystem;
using namespace kestrel;

namespace {

const std::string kCommit = "0123456789abcdef0123456789abcdef01234567";
const std::string kOtherCommit = "fedcba9876543210fedcba9876543210fedcba98";

// Sets (or, with nullopt, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "kestrel-source-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

// A cache entry as huggingface_hub leaves it: blobs, a snapshot of symlinks, refs/main.
fs::path make_cached_model(const fs::path& cache, const std::string& repo_id, const std::string& commit,
                           bool with_weights = true) {
  const fs::path repo = hf_cache::repo_dir(cache, repo_id);
  write(repo / "blobs" / "cfgetag", R"({"model_type": "gpt2"})");
  hf_cache::link_blob(repo, commit, "config.json", "cfgetag");
  if (with_weights) {
    write(repo / "blobs" / "weightsetag", "weights");
    hf_cache::link_blob(repo, commit, "model.safetensors", "weightsetag");
  }
  hf_cache::write_ref(repo, "main", commit);
  return repo;
}

// Runs f and returns the kestrel::Error message it throws ("" when it does not throw).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// An environment with no Hugging Face or Kestrel variables but the cache given.
struct CleanEnv {
  explicit CleanEnv(const fs::path& cache)
      : hub_cache("HF_HUB_CACHE", cache.string()),
        legacy("HUGGINGFACE_HUB_CACHE", std::nullopt),
        offline("HF_HUB_OFFLINE", "1"),
        tf_offline("TRANSFORMERS_OFFLINE", std::nullopt),
        assets("KESTREL_ASSETS_DIR", std::nullopt) {}
  ScopedEnv hub_cache, legacy, offline, tf_offline, assets;
};

}  // namespace

TEST(HfCacheNames, RepoFolderNameFollowsHuggingfaceHub) {
  EXPECT_EQ(hf_cache::repo_folder_name("gpt2"), "models--gpt2");
  EXPECT_EQ(hf_cache::repo_folder_name("google-t5/t5-small"), "models--google-t5--t5-small");
}

TEST(HfCacheNames, ValidatesRepoIdsRevisionsAndFileNames) {
  EXPECT_TRUE(hf_cache::is_valid_repo_id("gpt2"));
  EXPECT_TRUE(hf_cache::is_valid_repo_id("openai-community/gpt2-medium"));
  EXPECT_TRUE(hf_cache::is_valid_repo_id("org_1/model.v2"));
  for (const char* bad : {"", "a/b/c", "/gpt2", "gpt2/", "a b", "org/..", "org--x/name", "-x", "x.", "a/b?c"})
    EXPECT_FALSE(hf_cache::is_valid_repo_id(bad)) << bad;

  EXPECT_TRUE(hf_cache::is_commit_hash(kCommit));
  EXPECT_FALSE(hf_cache::is_commit_hash("main"));
  EXPECT_FALSE(hf_cache::is_commit_hash(kCommit.substr(1)));
  EXPECT_FALSE(hf_cache::is_commit_hash("0123456789ABCDEF0123456789abcdef01234567"));

  EXPECT_TRUE(hf_cache::is_valid_revision("main"));
  EXPECT_TRUE(hf_cache::is_valid_revision("refs/pr/1"));
  for (const char* bad : {"", "../main", "/main", "a/../b", "main/", "a\\b"})
    EXPECT_FALSE(hf_cache::is_valid_revision(bad)) << bad;

  EXPECT_TRUE(hf_cache::is_safe_relative_path("model-00001-of-00002.safetensors"));
  EXPECT_TRUE(hf_cache::is_safe_relative_path("onnx/model.onnx"));
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b"})
    EXPECT_FALSE(hf_cache::is_safe_relative_path(bad)) << bad;
}

TEST(HfCacheDir, EnvironmentPrecedence) {
  ScopedEnv hub("HF_HUB_CACHE", "/c/hub-cache"), legacy("HUGGINGFACE_HUB_CACHE", "/c/legacy"),
      home("HF_HOME", "/c/hf-home"), xdg("XDG_CACHE_HOME", "/c/xdg"), user_home("HOME", "/c/home");
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/hub-cache"));
  {
    ScopedEnv unset("HF_HUB_CACHE", std::nullopt);
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/legacy"));
    ScopedEnv unset_legacy("HUGGINGFACE_HUB_CACHE", std::nullopt);
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/hf-home/hub"));
    ScopedEnv unset_home("HF_HOME", std::nullopt);
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/xdg/huggingface/hub"));
    ScopedEnv unset_xdg("XDG_CACHE_HOME", std::nullopt);
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/home/.cache/huggingface/hub"));
    ScopedEnv empty_xdg("XDG_CACHE_HOME", "");  // empty counts as unset, as in huggingface_hub
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/home/.cache/huggingface/hub"));
  }
  ScopedEnv tilde("HF_HUB_CACHE", "~/models");
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/c/home/models"));
}

TEST(HfCacheLookup, FindsSnapshotThroughRefsAndCommitHashes) {
  TempDir tmp;
  make_cached_model(tmp.path(), "org/tiny", kCommit);
  const fs::path snap = hf_cache::repo_dir(tmp.path(), "org/tiny") / "snapshots" / kCommit;

  auto by_ref = hf_cache::lookup(tmp.path(), "org/tiny", "main");
  ASSERT_TRUE(by_ref.snapshot) << by_ref.problem;
  EXPECT_EQ(*by_ref.snapshot, snap);
  EXPECT_EQ(by_ref.commit, kCommit);

  auto by_commit = hf_cache::lookup(tmp.path(), "org/tiny", kCommit);
  ASSERT_TRUE(by_commit.snapshot) << by_commit.problem;
  EXPECT_EQ(*by_commit.snapshot, snap);

  // A ref written by hand (or by an older tool) with a trailing newline still works.
  write(hf_cache::repo_dir(tmp.path(), "org/tiny") / "refs" / "v1.0", kCommit + "\n");
  EXPECT_TRUE(hf_cache::lookup(tmp.path(), "org/tiny", "v1.0").snapshot);
  // Branch names with slashes live in subfolders of refs/, as huggingface_hub writes them.
  hf_cache::write_ref(hf_cache::repo_dir(tmp.path(), "org/tiny"), "refs/pr/1", kCommit);
  EXPECT_TRUE(hf_cache::lookup(tmp.path(), "org/tiny", "refs/pr/1").snapshot);

  ScopedEnv env("HF_HUB_CACHE", tmp.path().string());
  EXPECT_EQ(find_in_hf_cache("org/tiny", "main"), snap);
  EXPECT_EQ(find_in_hf_cache("org/other", "main"), std::nullopt);
  EXPECT_EQ(find_in_hf_cache("not a repo id", "main"), std::nullopt);
}

TEST(HfCacheLookup, ExplainsMissingAndMalformedEntries) {
  TempDir tmp;
  const fs::path cache = tmp.path();
  auto problem = [&](const std::string& repo, const std::string& rev) {
    auto r = hf_cache::lookup(cache, repo, rev);
    EXPECT_FALSE(r.snapshot) << repo << "@" << rev;
    return r.problem;
  };
  EXPECT_NE(problem("org/absent", "main").find("no cache entry"), std::string::npos);

  const fs::path repo = make_cached_model(cache, "org/tiny", kCommit);
  EXPECT_NE(problem("org/tiny", "dev").find("revision 'dev' was never fetched"), std::string::npos);
  EXPECT_NE(problem("org/tiny", kOtherCommit).find("is missing"), std::string::npos);

  write(repo / "refs" / "garbage", "not-a-commit");
  EXPECT_NE(problem("org/tiny", "garbage").find("does not hold a commit hash"), std::string::npos);
  write(repo / "refs" / "empty", "");
  EXPECT_NE(problem("org/tiny", "empty").find("does not hold a commit hash"), std::string::npos);
  write(repo / "refs" / "huge", std::string(10000, 'a'));
  EXPECT_NE(problem("org/tiny", "huge").find("does not hold a commit hash"), std::string::npos);
  write(repo / "refs" / "dangling", kOtherCommit);
  EXPECT_NE(problem("org/tiny", "dangling").find("snapshot"), std::string::npos);

  // A snapshot without config.json is an interrupted download, not a model.
  fs::create_directories(repo / "snapshots" / kOtherCommit);
  EXPECT_NE(problem("org/tiny", kOtherCommit).find("has no config.json"), std::string::npos);
  // Nor is one whose config.json points at a blob that was deleted.
  fs::create_symlink("../../blobs/gone", repo / "snapshots" / kOtherCommit / "config.json");
  EXPECT_NE(problem("org/tiny", kOtherCommit).find("has no config.json"), std::string::npos);

  // A file where the repository folder should be.
  write(cache / "models--org--file", "x");
  EXPECT_NE(problem("org/file", "main").find("no cache entry"), std::string::npos);
}

TEST(HfCacheLayout, LinksAreRelativeAndRefsSkipCommits) {
  TempDir tmp;
  const fs::path repo = tmp.path() / "models--org--tiny";
  write(repo / "blobs" / "abc", "data");
  hf_cache::link_blob(repo, kCommit, "config.json", "abc");
  hf_cache::link_blob(repo, kCommit, "onnx/model.onnx", "abc");
  EXPECT_EQ(fs::read_symlink(repo / "snapshots" / kCommit / "config.json"), fs::path("../../blobs/abc"));
  EXPECT_EQ(fs::read_symlink(repo / "snapshots" / kCommit / "onnx" / "model.onnx"),
            fs::path("../../../blobs/abc"));
  // Linking again replaces the link (a re-download after a blob changed).
  write(repo / "blobs" / "def", "new");
  hf_cache::link_blob(repo, kCommit, "config.json", "def");
  EXPECT_EQ(fs::read_symlink(repo / "snapshots" / kCommit / "config.json"), fs::path("../../blobs/def"));

  hf_cache::write_ref(repo, kCommit, kCommit);
  EXPECT_FALSE(fs::exists(repo / "refs"));
  hf_cache::write_ref(repo, "main", kCommit);
  std::ifstream in(repo / "refs" / "main");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, kCommit);  // no newline, as huggingface_hub writes it

  // No temporary files left behind.
  for (const auto& e : fs::recursive_directory_iterator(repo))
    EXPECT_EQ(e.path().filename().string().find(".kestrel-"), std::string::npos) << e.path();
}

TEST(HfCacheLayout, HasWeightsNeedsEveryShardOfAnIndex) {
  TempDir tmp;
  const fs::path snap = tmp.path();
  EXPECT_FALSE(hf_cache::has_weights(snap));
  write(snap / "model.safetensors.index.json",
        R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                           "b": "model-00002-of-00002.safetensors"}})");
  write(snap / "model-00001-of-00002.safetensors", "x");
  EXPECT_FALSE(hf_cache::has_weights(snap));
  write(snap / "model-00002-of-00002.safetensors", "x");
  EXPECT_TRUE(hf_cache::has_weights(snap));

  write(snap / "model.safetensors.index.json", "{ not json");
  EXPECT_FALSE(hf_cache::has_weights(snap));
  write(snap / "model.safetensors.index.json", R"({"weight_map": {"a": "../../../etc/passwd"}})");
  EXPECT_FALSE(hf_cache::has_weights(snap));
  write(snap / "pytorch_model.bin", "x");
  EXPECT_TRUE(hf_cache::has_weights(snap));
}

TEST(ResolveModel, LocalFolders) {
  TempDir tmp;
  CleanEnv env(tmp.path() / "cache");
  write(tmp.path() / "model" / "config.json", "{}");
  EXPECT_EQ(resolve_model((tmp.path() / "model").string()), tmp.path() / "model");
  EXPECT_EQ(resolve_model((tmp.path() / "model" / "").string()), tmp.path() / "model" / "");

  fs::create_directories(tmp.path() / "empty");
  EXPECT_NE(
      error_of([&] { resolve_model((tmp.path() / "empty").string()); }).find("folder has no config.json"),
      std::string::npos);
  EXPECT_NE(
      error_of([&] { resolve_model((tmp.path() / "model" / "config.json").string()); }).find("is a file"),
      std::string::npos);
  EXPECT_NE(error_of([&] { resolve_model((tmp.path() / "nope").string()); }).find("no such folder"),
            std::string::npos);
  EXPECT_NE(error_of([&] { resolve_model("./nope"); }).find("./nope: no such folder"), std::string::npos);
}

TEST(ResolveModel, RejectsBadNamesAndRevisions) {
  TempDir tmp;
  CleanEnv env(tmp.path());
  EXPECT_NE(error_of([] { resolve_model(""); }).find("no model given"), std::string::npos);
  EXPECT_NE(error_of([] { resolve_model("not a model"); }).find("not a model"), std::string::npos);
  ResolveOptions bad_rev;
  bad_rev.revision = "../../etc";
  EXPECT_NE(error_of([&] { resolve_model("org/tiny", bad_rev); }).find("--revision '../../etc'"),
            std::string::npos);
}

TEST(ResolveModel, CacheThenBuiltinThenOfflineError) {
  TempDir tmp;
  const fs::path cache = tmp.path() / "cache";
  CleanEnv env(cache);

  // Offline and absent: one line naming the model, the cache problem and the offline switch.
  const std::string msg = error_of([] { resolve_model("org/tiny"); });
  EXPECT_NE(msg.find("model 'org/tiny' is not in the Hugging Face cache"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HF_HUB_OFFLINE"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  ResolveOptions offline_opt;
  offline_opt.offline = true;
  {
    ScopedEnv online("HF_HUB_OFFLINE", std::nullopt);
    EXPECT_NE(error_of([&] { resolve_model("org/tiny", offline_opt); }).find("not in the Hugging Face cache"),
              std::string::npos);
  }

  make_cached_model(cache, "org/tiny", kCommit);
  EXPECT_EQ(resolve_model("org/tiny"), hf_cache::repo_dir(cache, "org/tiny") / "snapshots" / kCommit);
  ResolveOptions by_commit;
  by_commit.revision = kCommit;
  EXPECT_EQ(resolve_model("org/tiny", by_commit),
            hf_cache::repo_dir(cache, "org/tiny") / "snapshots" / kCommit);

  // Built-in models come from KESTREL_ASSETS_DIR/models/<name>.
  const fs::path assets = tmp.path() / "assets";
  write(assets / "models" / "kestrel-gpt2-kjv" / "config.json", "{}");
  ScopedEnv assets_env("KESTREL_ASSETS_DIR", assets.string());
  EXPECT_EQ(find_builtin_model("kestrel-gpt2-kjv"), assets / "models" / "kestrel-gpt2-kjv");
  EXPECT_EQ(find_builtin_model("kestrel-t5-kjv"), std::nullopt);
  EXPECT_EQ(find_builtin_model("../assets"), std::nullopt);
  EXPECT_EQ(resolve_model("kestrel-gpt2-kjv"), assets / "models" / "kestrel-gpt2-kjv");

  // The cache comes before the built-in models.
  make_cached_model(cache, "kestrel-gpt2-kjv", kOtherCommit);
  EXPECT_EQ(resolve_model("kestrel-gpt2-kjv"),
            hf_cache::repo_dir(cache, "kestrel-gpt2-kjv") / "snapshots" / kOtherCommit);
}

TEST(ResolveModel, OfflineAcceptsSnapshotWithoutWeights) {
  // Offline there is nothing better to do than hand over what the cache has; the weights loader then names
  // the missing file.
  TempDir tmp;
  CleanEnv env(tmp.path());
  make_cached_model(tmp.path(), "org/config-only", kCommit, /*with_weights=*/false);
  EXPECT_EQ(resolve_model("org/config-only"),
            hf_cache::repo_dir(tmp.path(), "org/config-only") / "snapshots" / kCommit);
}

TEST(Progress, FormatsAmountsAndLines) {
  EXPECT_EQ(Progress::format_amount(512, Progress::Unit::Bytes), "512 B");
  EXPECT_EQ(Progress::format_amount(1536, Progress::Unit::Bytes), "1.5 KiB");
  EXPECT_EQ(Progress::format_amount(3ull << 30, Progress::Unit::Bytes), "3.0 GiB");
  EXPECT_EQ(Progress::format_amount(1234, Progress::Unit::Items), "1234");
  EXPECT_EQ(Progress::format_line("model.safetensors", 1 << 20, 4 << 20, 2 << 20, Progress::Unit::Bytes),
            "model.safetensors  1.0 MiB / 4.0 MiB   25%  2.0 MiB/s");
  EXPECT_EQ(Progress::format_line("x", 10, 0, -1, Progress::Unit::Items), "x  10");
  EXPECT_EQ(Progress::format_line("x", 7, 5, -1, Progress::Unit::Items), "x  7 / 5  100%");
}
