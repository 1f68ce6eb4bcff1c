#pragma once
// A small libcurl wrapper for the two requests the Hub needs: HEAD for a file's metadata, and a resumable GET
// straight into a file. Transport failures come back as values (not exceptions) so callers can decide whether
// to retry.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace kestrel::http {

struct Response {
  long status = 0;                             // 0 when no HTTP response arrived
  std::map<std::string, std::string> headers;  // of the last response, names lower-cased
  std::string body;                            // error bodies only, cut to a few KiB
  std::string transport_error;                 // set when the transfer itself failed (network, timeout, cut)
  bool retryable = false;                      // a transient failure: worth trying again

  bool ok() const { return transport_error.empty() && status >= 200 && status < 300; }
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
  // "HTTP 404" or the transport error, for messages.
  std::string describe() const;
};

// HEAD without following redirects: a Hub answers a LFS file with a redirect whose own headers carry the
// metadata (X-Linked-Etag, X-Linked-Size), which a followed redirect would lose.
Response head(const std::string& url, const std::vector<std::string>& headers);

// GET url into the file at `path`, which already holds `offset` bytes: asks for the rest with a Range request
// and appends; when the server ignores the range (200), restarts the file from zero. Follows redirects.
// `on_bytes(total_bytes_in_file)` is called as data arrives; `on_restart(0)` when the file was restarted.
struct FileTransfer {
  std::function<void(uint64_t)> on_bytes;
  std::function<void(uint64_t)> on_restart;
};
Response get_to_file(const std::string& url, const std::vector<std::string>& headers, const std::string& path,
                     uint64_t offset, const FileTransfer& callbacks);

// Percent-encodes a URL path segment (everything but unreserved characters).
std::string escape_segment(const std::string& s);

}  // namespace kestrel::http
