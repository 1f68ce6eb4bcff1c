"""Fixtures of the Python package tests: the installed `kestrel` package, random GPT-2 / T5 checkpoints (with
transformers' reference model alongside), and a private engine cache per test session."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))
import checkpoints  # noqa: E402  (tests/models/checkpoints.py: random checkpoints with a large weight spread)


@pytest.fixture(scope="session")
def kestrel():
    try:
        import kestrel as module
    except ImportError as e:
        pytest.fail(f"the kestrel package is not installed ({e}); run `.venv/bin/pip install --no-build-isolation "
                    "./python` from the repository root")
    return module


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own engine cache, so no test sees another's entries (or the user's)."""
    cache = tmp_path_factory.mktemp("kestrel-cache")
    monkeypatch.setenv("KESTREL_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def gpt2_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    model = checkpoints.make_gpt2(folder, seed=1, pad_token_id=0, eos_token_id=2)
    return folder, model


@pytest.fixture(scope="session")
def t5_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    model = checkpoints.make_t5(folder, seed=2)
    return folder, model
