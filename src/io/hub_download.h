#pragma once
// Downloads a model from the Hugging Face Hub into the hub cache, laid out exactly as huggingface_hub lays it
// out (see io/hf_cache.h), so Python finds Kestrel's downloads and Kestrel reuses Python's.
//
// Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN (sent as a Bearer token).
// Every file is first asked for with HEAD (its commit, ETag and size), then, if its blob is not in the cache
// yet, fetched with GET into blobs/<etag>.incomplete: a dropped connection is retried with backoff and
// resumed with a Range request, also by a later run; the finished blob is renamed into place. config.json is
// linked into the snapshot last, so a snapshot with a config.json is always complete.
#include <filesystem>
#include <string>

#include "io/model_source.h"

namespace kestrel {

// HF_ENDPOINT without a trailing '/', or https://huggingface.co.
std::string hf_endpoint();

// Downloads repo_id at opts.revision (opts.files, or Kestrel's default list) into `cache`; returns the
// snapshot folder. Throws kestrel::Error: model not found, authentication needed, network failure after
// retries, ...
std::filesystem::path download_from_hub(const std::string& repo_id, const ResolveOptions& opts,
                                        const std::filesystem::path& cache);

}  // namespace kestrel
