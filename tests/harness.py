"""Shared test helpers, importable by name from every test folder (`from harness import run_kestrel`):
where the built binaries are, where ../shared is, and how to run the CLI."""
import os
import pathlib
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("KESTREL_BUILD_DIR", ROOT / "build"))
SHARED = pathlib.Path(os.environ.get("KESTREL_SHARED_DIR", ROOT.parent / "shared"))
# Engines that commands build and cache go to a private folder, never the user's ~/.cache/kestrel.
os.environ.setdefault("KESTREL_CACHE", tempfile.mkdtemp(prefix="kestrel-test-cache-"))


def kestrel_path() -> pathlib.Path:
    return BUILD / "src" / "cli" / "kestrel"


def run_kestrel(*args, input=None, check=True, env=None, timeout=600):
    """Runs the kestrel CLI; returns the CompletedProcess (text mode)."""
    e = dict(os.environ)
    e.setdefault("HF_HUB_OFFLINE", "1")
    if env:
        e.update(env)
    r = subprocess.run([str(kestrel_path()), *map(str, args)], input=input, capture_output=True, text=True,
                       env=e, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"kestrel {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr}")
    return r
