"""Hub downloads through `kestrel inspect ORG/NAME --json`, against tests/io/fake_hub.py (no network).

Checks that Kestrel fills the Hugging Face cache exactly as huggingface_hub does (so transformers finds the files
offline and Kestrel reuses a cache filled by Python), never touches the network when the cache has the model
or offline mode is on, reports 404/401 clearly, sends HF_TOKEN, and survives a dropped connection by resuming.
"""
import hashlib
import json
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from harness import run_kestrel  # noqa: E402
from fake_hub import FakeHub  # noqa: E402

REPO = "kestrel-test/tiny-gpt2"


def _save_tiny_gpt2(folder: pathlib.Path, **save_kwargs) -> pathlib.Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=97, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(folder, **save_kwargs)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> pathlib.Path:
    return _save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def hub(tiny_gpt2):
    with FakeHub() as h:
        h.add_folder(REPO, tiny_gpt2)
        yield h


@pytest.fixture
def cache(tmp_path) -> pathlib.Path:
    return tmp_path / "hf-cache"


def _env(hub: FakeHub, cache: pathlib.Path, **extra) -> dict:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}
    env.update(extra)
    return env


def _inspect(model: str, env: dict, *args, check=True):
    r = run_kestrel("inspect", model, "--json", *args, env=env, check=check)
    return (json.loads(r.stdout) if r.returncode == 0 else None), r


def _layout(repo_dir: pathlib.Path) -> dict:
    """Every entry under the repo folder except locks: symlink targets for links, sizes for files."""
    out = {}
    for p in sorted(repo_dir.rglob("*")):
        rel = p.relative_to(repo_dir).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.stat().st_size
    return out


def test_download_lays_out_the_cache_like_huggingface_hub(hub, cache, tiny_gpt2):
    j, _ = _inspect(REPO, _env(hub, cache))
    commit = hub.commits[REPO]
    repo_dir = cache / "models--kestrel-test--tiny-gpt2"
    assert pathlib.Path(j["path"]) == repo_dir / "snapshots" / commit
    assert j["architecture"] == "gpt2"
    assert (repo_dir / "refs" / "main").read_text() == commit

    for name in ("config.json", "generation_config.json", "model.safetensors"):
        link = repo_dir / "snapshots" / commit / name
        data = (tiny_gpt2 / name).read_bytes()
        assert link.is_symlink() and link.read_bytes() == data
        # LFS files are stored under their sha256, small files under their git blob sha1 (the Hub's ETags).
        if name.endswith(".safetensors"):
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert os.readlink(link) == f"../../blobs/{etag}"
    assert not list(repo_dir.rglob("*.incomplete"))
    # Files the Hub does not have are remembered the way huggingface_hub remembers them.
    assert (repo_dir / ".no_exist" / commit / "tokenizer.json").is_file()

    # transformers finds Kestrel's download without a network.
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(REPO, cache_dir=cache, local_files_only=True)
    assert cfg.n_embd == 16
    AutoModelForCausalLM.from_pretrained(REPO, cache_dir=cache, local_files_only=True)


def test_same_layout_as_python_download(hub, cache, tmp_path):
    from huggingface_hub import hf_hub_download

    py_cache = tmp_path / "py-cache"
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        hf_hub_download(REPO, name, cache_dir=py_cache, endpoint=hub.url, token=False)
    _inspect(REPO, _env(hub, cache))
    ours = _layout(cache / "models--kestrel-test--tiny-gpt2")
    theirs = _layout(py_cache / "models--kestrel-test--tiny-gpt2")
    assert {k: v for k, v in ours.items() if not k.startswith(".no_exist")} == theirs


def test_cache_filled_by_python_is_used_offline(hub, cache):
    from huggingface_hub import hf_hub_download

    for name in ("config.json", "model.safetensors"):
        hf_hub_download(REPO, name, cache_dir=cache, endpoint=hub.url, token=False)
    hub.clear_requests()
    j, _ = _inspect(REPO, _env(hub, cache, HF_HUB_OFFLINE="1"))
    assert pathlib.Path(j["path"]).name == hub.commits[REPO]
    assert hub.count() == 0


def test_second_run_does_not_touch_the_network(hub, cache):
    j1, _ = _inspect(REPO, _env(hub, cache))
    assert hub.count() > 0
    hub.clear_requests()
    j2, _ = _inspect(REPO, _env(hub, cache))
    assert j2["path"] == j1["path"]
    assert hub.count() == 0


def test_offline_mode_fails_cleanly_when_not_cached(hub, cache):
    for offline in ("1", "true", "YES"):
        _, r = _inspect(REPO, _env(hub, cache, HF_HUB_OFFLINE=offline), check=False)
        assert r.returncode == 1
        assert "not in the Hugging Face cache" in r.stderr and "HF_HUB_OFFLINE" in r.stderr
    assert hub.count() == 0


def test_unknown_model_is_reported_not_found(hub, cache):
    _, r = _inspect("kestrel-test/no-such-model", _env(hub, cache), check=False)
    assert r.returncode == 1
    assert "model 'kestrel-test/no-such-model' not found on the Hub" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_revision_is_reported(hub, cache):
    _, r = _inspect(REPO, _env(hub, cache), "--revision", "no-such-branch", check=False)
    assert r.returncode == 1
    assert "no revision 'no-such-branch'" in r.stderr


def test_revision_by_commit_hash(hub, cache):
    commit = hub.commits[REPO]
    j, _ = _inspect(REPO, _env(hub, cache), "--revision", commit)
    assert pathlib.Path(j["path"]).name == commit
    # A commit is its own name: no ref is written for it.
    assert not (cache / "models--kestrel-test--tiny-gpt2" / "refs").exists()
    hub.clear_requests()
    _inspect(REPO, _env(hub, cache, HF_HUB_OFFLINE="1"), "--revision", commit)
    assert hub.count() == 0


def test_private_model_needs_a_token(hub, cache):
    hub.token = "hf_secret"
    _, r = _inspect(REPO, _env(hub, cache), check=False)
    assert r.returncode == 1
    assert "needs authentication: set HF_TOKEN" in r.stderr

    _, r = _inspect(REPO, _env(hub, cache, HF_TOKEN="hf_wrong"), check=False)
    assert r.returncode == 1
    assert "refused HF_TOKEN" in r.stderr

    hub.clear_requests()
    j, _ = _inspect(REPO, _env(hub, cache, HF_TOKEN="hf_secret"))
    assert j["architecture"] == "gpt2"
    assert hub.count() > 0
    hub_requests = [req for req in hub.requests if "/resolve/" in req["path"]]
    cdn_requests = [req for req in hub.requests if req["path"].startswith("/cdn/")]
    assert hub_requests and cdn_requests
    assert all(req["authorization"] == "Bearer hf_secret" for req in hub_requests)
    # The token stays on the Hub: it is not forwarded to the CDN the weights are redirected to.
    assert all(req["authorization"] is None for req in cdn_requests)


def test_dropped_connection_is_resumed(hub, cache, tiny_gpt2):
    data = (tiny_gpt2 / "model.safetensors").read_bytes()
    hub.drop("model.safetensors")
    j, r = _inspect(REPO, _env(hub, cache))
    assert (pathlib.Path(j["path"]) / "model.safetensors").read_bytes() == data
    # The weights come from the CDN the Hub redirects to; the retry asks it for the second half only.
    cdn_gets = [req for req in hub.requests if req["method"] == "GET" and req["path"].startswith("/cdn/")]
    assert [req["range"] for req in cdn_gets] == [None, f"bytes={len(data) // 2}-"]
    assert not list(cache.rglob("*.incomplete"))


def test_partial_file_from_an_earlier_run_is_resumed(hub, cache, tiny_gpt2):
    data = (tiny_gpt2 / "model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    blobs = cache / "models--kestrel-test--tiny-gpt2" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(data[:1000])
    j, _ = _inspect(REPO, _env(hub, cache))
    assert (blobs / sha).read_bytes() == data
    cdn_gets = [req for req in hub.requests if req["method"] == "GET" and req["path"].startswith("/cdn/")]
    assert [req["range"] for req in cdn_gets] == ["bytes=1000-"]
    assert not (blobs / f"{sha}.incomplete").exists()


def test_server_ignoring_the_range_restarts_the_file(hub, cache, tiny_gpt2):
    data = (tiny_gpt2 / "model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    blobs = cache / "models--kestrel-test--tiny-gpt2" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\xff" * 1000)  # would corrupt the file if appended to
    hub.ignore_range = True
    _inspect(REPO, _env(hub, cache))
    assert (blobs / sha).read_bytes() == data


def test_unreachable_hub_suggests_offline_mode(cache):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0"}
    _, r = _inspect(REPO, env, check=False)
    assert r.returncode == 1
    assert "downloading config.json failed" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr


def test_failed_download_never_looks_complete(hub, cache):
    hub.drop("model.safetensors", times=100)
    _, r = _inspect(REPO, _env(hub, cache), check=False)
    assert r.returncode == 1
    assert "model.safetensors" in r.stderr
    repo_dir = cache / "models--kestrel-test--tiny-gpt2"
    # The weights stay an .incomplete blob and config.json is not linked: the snapshot does not count as cached.
    assert not list(repo_dir.glob("snapshots/*/config.json"))
    assert not list(repo_dir.glob("snapshots/*/model.safetensors"))
    assert list(repo_dir.glob("blobs/*.incomplete"))
    _, r = _inspect(REPO, _env(hub, cache, HF_HUB_OFFLINE="1"), check=False)
    assert r.returncode == 1 and "not in the Hugging Face cache" in r.stderr
    # Online again with a healthy Hub: the download picks up where it stopped.
    hub.drops.clear()
    j, _ = _inspect(REPO, _env(hub, cache))
    assert j["architecture"] == "gpt2"
    assert not list(repo_dir.rglob("*.incomplete"))


def test_sharded_safetensors_are_fetched_through_the_index(cache, tmp_path):
    folder = _save_tiny_gpt2(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    with FakeHub() as h:
        h.add_folder(REPO, folder)
        j, _ = _inspect(REPO, _env(h, cache))
    snap = pathlib.Path(j["path"])
    for s in shards:
        assert (snap / s).read_bytes() == (folder / s).read_bytes()


def test_pytorch_bin_is_the_fallback(cache, tmp_path, tiny_gpt2):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin-only"
    folder.mkdir()
    shutil.copy(tiny_gpt2 / "config.json", folder / "config.json")
    torch.save(load_file(tiny_gpt2 / "model.safetensors"), folder / "pytorch_model.bin")
    with FakeHub() as h:
        h.add_folder(REPO, folder)
        j, _ = _inspect(REPO, _env(h, cache))
    assert (pathlib.Path(j["path"]) / "pytorch_model.bin").read_bytes() == (folder / "pytorch_model.bin").read_bytes()


def test_model_without_weights_is_an_error(cache, tiny_gpt2):
    with FakeHub() as h:
        h.add_repo(REPO, {"config.json": (tiny_gpt2 / "config.json").read_bytes()})
        _, r = _inspect(REPO, _env(h, cache), check=False)
    assert r.returncode == 1
    assert "has no weights" in r.stderr
