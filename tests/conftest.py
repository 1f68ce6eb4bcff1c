"""Shared pytest fixtures: where the built binaries are, where ../shared is, random-checkpoint factories."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("KESTREL_BUILD_DIR", ROOT / "build"))
SHARED = pathlib.Path(os.environ.get("KESTREL_SHARED_DIR", ROOT.parent / "shared"))


def kestrel_path() -> pathlib.Path:
    return BUILD / "src" / "cli" / "kestrel"


@pytest.fixture(scope="session")
def kestrel_bin() -> pathlib.Path:
    p = kestrel_path()
    if not p.exists():
        pytest.fail(f"{p} not built; run `make test` (or set KESTREL_BUILD_DIR)")
    return p


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    return BUILD


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: tests that need ../shared are skipped")
    return SHARED


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
