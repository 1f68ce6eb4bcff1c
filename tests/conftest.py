"""Fixtures shared by every test folder; plain helpers live in harness.py (conftest modules can't be imported
by name reliably once several folders have one)."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from harness import BUILD, SHARED, kestrel_path  # noqa: E402


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
