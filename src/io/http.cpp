#include "io/http.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>

#include "core/error.h"

namespace kestrel::http {

namespace {

constexpr size_t kMaxErrorBody = 4096;
constexpr const char* kUserAgent = "kestrel/0.1.0";

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      internal_error("libcurl: global initialisation failed");
  });
}

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

// Failures that say nothing about the file itself: a retry (with a resume) may well succeed.
bool is_transient(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

bool is_transient_status(long s) {
  return s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

// State shared with the curl callbacks of one transfer.
struct Transfer {
  Response* resp = nullptr;
  // GET-to-file only:
  int fd = -1;
  uint64_t offset = 0;  // bytes in the file
  uint64_t range_start = 0;
  bool range_seen = false;
  bool body_started = false;
  bool writing = false;  // false: the body is an error page, kept in resp->body
  std::string abort_reason;     // why a callback stopped the transfer
  bool abort_retryable = false;  // a confused server is worth another try; a full disk is not
  const FileTransfer* callbacks = nullptr;
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string line(data, size * n);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response (after a redirect): its headers replace the previous ones.
    t->resp->headers.clear();
    t->range_seen = false;
    t->body_started = false;  // a redirect's own body, if curl passes one on, is not the file
    t->writing = false;
    const size_t sp = line.find(' ');
    t->resp->status = sp == std::string::npos ? 0 : std::strtol(line.c_str() + sp + 1, nullptr, 10);
    return size * n;
  }
  const size_t colon = line.find(':');
  if (colon == std::string::npos) return size * n;
  std::string name = line.substr(0, colon);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  std::string value = line.substr(colon + 1);
  const size_t first = value.find_first_not_of(" \t");
  value = first == std::string::npos ? std::string() : value.substr(first);
  if (name == "content-range") {
    // "bytes START-END/TOTAL"
    const size_t sp = value.find(' ');
    if (sp != std::string::npos) {
      t->range_start = std::strtoull(value.c_str() + sp + 1, nullptr, 10);
      t->range_seen = true;
    }
  }
  t->resp->headers[name] = value;
  return size * n;
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= size_t(w);
  }
  return true;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (t->fd < 0) return bytes;  // HEAD: nothing to keep
  if (!t->body_started) {
    t->body_started = true;
    const long s = t->resp->status;
    if (s == 206) {
      if (!t->range_seen || t->range_start != t->offset) {
        t->abort_reason = "server resumed at the wrong offset";
        t->abort_retryable = true;
        return 0;  // aborts the transfer
      }
      t->writing = true;
    } else if (s == 200) {
      t->writing = true;
      if (t->offset > 0) {  // the server ignored the Range request: start the file again
        if (::ftruncate(t->fd, 0) != 0 || ::lseek(t->fd, 0, SEEK_SET) != 0) {
          t->abort_reason = std::string("cannot truncate: ") + std::strerror(errno);
          return 0;
        }
        t->offset = 0;
        if (t->callbacks->on_restart) t->callbacks->on_restart(0);
      }
    }
  }
  if (!t->writing) {
    const size_t room = kMaxErrorBody - std::min(kMaxErrorBody, t->resp->body.size());
    t->resp->body.append(data, std::min(room, bytes));
    return bytes;
  }
  if (!write_all(t->fd, data, bytes)) {
    t->abort_reason = std::string("cannot write: ") + std::strerror(errno);
    return 0;
  }
  t->offset += bytes;
  if (t->callbacks->on_bytes) t->callbacks->on_bytes(t->offset);
  return bytes;
}

CurlPtr new_handle(const std::string& url, curl_slist* headers, Transfer* t) {
  global_init();
  CurlPtr c(curl_easy_init());
  if (!c) internal_error("libcurl: cannot create a handle");
  curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c.get(), CURLOPT_USERAGENT, kUserAgent);
  curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.get(), CURLOPT_CONNECTTIMEOUT, 10L);
  // A stalled transfer (under 1 byte/s for 30 s) counts as dropped and is retried with a resume.
  curl_easy_setopt(c.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c.get(), CURLOPT_LOW_SPEED_TIME, 30L);
  curl_easy_setopt(c.get(), CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c.get(), CURLOPT_HEADERDATA, t);
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, t);
  return c;
}

SlistPtr make_headers(const std::vector<std::string>& headers) {
  curl_slist* list = nullptr;
  // Sizes and resumes are in bytes of the file itself, so no transfer compression.
  for (const std::string& h : headers) list = curl_slist_append(list, h.c_str());
  list = curl_slist_append(list, "Accept-Encoding: identity");
  return SlistPtr(list);
}

void finish(CURLcode rc, Transfer& t) {
  Response& r = *t.resp;
  if (!t.abort_reason.empty()) {
    r.transport_error = t.abort_reason;
    r.retryable = t.abort_retryable;
  } else if (rc != CURLE_OK) {
    r.transport_error = curl_easy_strerror(rc);
    r.retryable = is_transient(rc);
  } else {
    r.retryable = is_transient_status(r.status);
  }
}

}  // namespace

std::string Response::describe() const {
  if (!transport_error.empty()) return transport_error;
  return "HTTP " + std::to_string(status);
}

Response head(const std::string& url, const std::vector<std::string>& headers) {
  Response r;
  Transfer t;
  t.resp = &r;
  SlistPtr list = make_headers(headers);
  CurlPtr c = new_handle(url, list.get(), &t);
  curl_easy_setopt(c.get(), CURLOPT_NOBODY, 1L);
  curl_easy_setopt(c.get(), CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c.get(), CURLOPT_TIMEOUT, 30L);
  finish(curl_easy_perform(c.get()), t);
  return r;
}

Response get_to_file(const std::string& url, const std::vector<std::string>& headers, const std::string& path,
                     uint64_t offset, const FileTransfer& callbacks) {
  Response r;
  Transfer t;
  t.resp = &r;
  t.offset = offset;
  t.callbacks = &callbacks;
  t.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (t.fd < 0) fail(path + ": cannot open for writing: " + std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{t.fd};
  // Keep exactly the bytes we trust, then append after them.
  if (::ftruncate(t.fd, off_t(offset)) != 0 || ::lseek(t.fd, off_t(offset), SEEK_SET) != off_t(offset))
    fail(path + ": cannot prepare for resume: " + std::strerror(errno));

  std::vector<std::string> all = headers;
  if (offset > 0) all.push_back("Range: bytes=" + std::to_string(offset) + "-");
  SlistPtr list = make_headers(all);
  CurlPtr c = new_handle(url, list.get(), &t);
  curl_easy_setopt(c.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c.get(), CURLOPT_MAXREDIRS, 10L);
  // Redirects go to another host (a CDN with a signed URL): curl keeps the Authorization header away from it.
  curl_easy_setopt(c.get(), CURLOPT_UNRESTRICTED_AUTH, 0L);
  finish(curl_easy_perform(c.get()), t);
  if (r.transport_error.empty() && r.status == 416) r.retryable = false;
  return r;
}

std::string escape_segment(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += char(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace kestrel::http
