"""A local stand-in for the Hugging Face Hub's file endpoint, for download tests without a network.

Serves `/<repo>/resolve/<revision>/<file>` the way huggingface.co does:
  - small files: 200 with ETag (the git blob sha1), Content-Length and X-Repo-Commit;
  - weight files (*.safetensors, *.bin): 302 to a "CDN" URL (this server, named "localhost" to look like another
    host; no token checked there), with X-Linked-Etag (sha256),
    X-Linked-Size and X-Repo-Commit on the redirect itself, as the Hub does for LFS files;
  - 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound;
  - Range requests (206 + Content-Range).
Switches for failure tests: `token` (401 unless `Authorization: Bearer <token>`), `drop(name, times)` (the next
`times` GETs of that file send the headers and half the body, then cut the connection). Every request is
recorded. `ignore_range` makes it answer Range requests with the whole file.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


def _is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin"))


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.token: str | None = None
        self.drops: dict[str, int] = {}  # file name -> how many more GETs to cut short
        self.ignore_range = False  # answer Range requests with the whole file (200), as some servers do
        self.requests: list[dict] = []
        self._blobs: dict[str, bytes] = {}  # sha256 -> bytes, for the CDN route
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- setup -------------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publishes files under repo_id; returns the commit hash the Hub will report."""
        self.repos[repo_id] = dict(files)
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        commit = digest.hexdigest()
        self.commits[repo_id] = commit
        for data in files.values():
            self._blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def drop(self, name: str, times: int = 1) -> None:
        """Cuts the next `times` downloads of file `name` (base name) halfway through."""
        self.drops[name] = times

    def add_folder(self, repo_id: str, folder: os.PathLike) -> str:
        folder = pathlib.Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return self.add_repo(repo_id, files)

    # --- queries for tests -------------------------------------------------------------------------------------
    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if method is None or r["method"] == method)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._handle(self, body=False)

            def do_GET(self):
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # --- request handling --------------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        with self._lock:
            self.requests.append({"method": h.command, "path": h.path,
                                  "authorization": h.headers.get("Authorization"),
                                  "range": h.headers.get("Range")})
        m = _CDN.match(h.path)
        if m:  # a signed CDN URL: no token needed (and clients must not send it there)
            data = self._blobs.get(m["sha"])
            if data is None:
                return self._reply(h, 404, {}, b"no such blob", body)
            return self._send_file(h, f"cdn/{m['sha']}", data, {}, body)
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(h, 401, {"X-Error-Code": "RepoNotFound"}, b"Invalid username or password.", body)
        m = _RESOLVE.match(h.path)
        if not m:
            return self._reply(h, 404, {}, b"not a resolve URL", body)
        repo, rev = m["repo"], urllib.parse.unquote(m["rev"])
        name = urllib.parse.unquote(m["file"])
        if repo not in self.repos:
            return self._reply(h, 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", body)
        commit = self.commits[repo]
        if rev not in ("main", commit):
            return self._reply(h, 404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id", body)
        headers = {"X-Repo-Commit": commit}
        data = self.repos[repo].get(name)
        if data is None:
            return self._reply(h, 404, {**headers, "X-Error-Code": "EntryNotFound"}, b"Entry not found", body)
        if _is_lfs(name):
            sha = hashlib.sha256(data).hexdigest()
            # "localhost" rather than 127.0.0.1: another host name, as the Hub's CDN is, so clients take the
            # metadata from this redirect instead of following it.
            port = self._server.server_address[1]
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                            "Location": f"http://localhost:{port}/cdn/{sha}"})
            return self._reply(h, 302, headers, b"", body)
        headers["ETag"] = f'"{_git_blob_sha1(data)}"'
        return self._send_file(h, name, data, headers, body)

    def _send_file(self, h, name: str, data: bytes, headers: dict, body: bool) -> None:
        start = 0
        rng = None if self.ignore_range else _RANGE.match(h.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            if start >= len(data):
                return self._reply(h, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
        status = 206 if rng else 200
        if rng:
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        payload = data[start:]
        key = name.split("/")[-1] if not name.startswith("cdn/") else self._name_of_blob(name[4:])
        with self._lock:
            cut = body and self.drops.get(key, 0) > 0
            if cut:
                self.drops[key] -= 1
        if cut:
            # Headers promise the whole file; half of it arrives, then the connection is cut.
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._reply(h, status, headers, payload, body)

    def _name_of_blob(self, sha: str) -> str:
        for files in self.repos.values():
            for name, data in files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return name.split("/")[-1]
        return ""

    @staticmethod
    def _reply(h, status: int, headers: dict, payload: bytes, body: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body:
            h.wfile.write(payload)
