"""Engine files from the CLI and the package: build -> file -> load runs bit-identically to the HF folder, the
engine cache follows the checkpoint, and every damaged, foreign or mismatched file is a clear error."""
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

from helpers import kestrel_path, run_kestrel  # noqa: E402


def generate_json(model, *extra):
    r = run_kestrel("generate", model, "--prompt-ids", "1,2,3", "--prompt-ids", "7", "--max-new-tokens", "12",
                    "--json", *extra)
    return json.loads(r.stdout)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_cli_engine_matches_folder(arch, gpt2_checkpoint, t5_checkpoint, tmp_path, kestrel_bin):
    folder = (gpt2_checkpoint if arch == "gpt2" else t5_checkpoint)[0]
    engine = tmp_path / f"{arch}.kestrel"
    run_kestrel("build", folder, "-o", engine)
    assert engine.stat().st_size > 0
    assert generate_json(engine) == generate_json(folder)
    assert generate_json(engine, "--num-beams", "3") == generate_json(folder, "--num-beams", "3")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_package_engine_logits_are_bit_identical(arch, kestrel, gpt2_checkpoint, t5_checkpoint, tmp_path):
    folder = (gpt2_checkpoint if arch == "gpt2" else t5_checkpoint)[0]
    engine = tmp_path / "m.kestrel"
    kestrel.build_engine(str(folder), str(engine))
    from_folder = kestrel.from_pretrained(folder, cache=False)
    from_engine = kestrel.from_pretrained(engine)
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    kwargs = {"decoder_input_ids": ids[:, :3]} if arch == "t5" else {}
    a = from_folder(ids, **kwargs).logits
    b = from_engine(ids, **kwargs).logits
    assert torch.equal(a, b)
    # deterministic= (cuda: no arbitrary-order partial sums) is accepted on the CPU, which always is.
    assert torch.equal(kestrel.from_pretrained(folder, cache=False, deterministic=True)(ids, **kwargs).logits, a)
    assert torch.equal(from_folder.generate(ids, max_new_tokens=8, num_beams=2),
                       from_engine.generate(ids, max_new_tokens=8, num_beams=2))


def test_cache_entry_is_reused_and_invalidated(kestrel, gpt2_checkpoint, tmp_path, private_cache):
    import shutil
    folder = tmp_path / "ckpt"
    shutil.copytree(gpt2_checkpoint[0], folder)
    first = kestrel.engine_cache_path(str(folder))
    kestrel.from_pretrained(folder)
    assert os.path.exists(first)
    built_at = os.stat(first).st_mtime_ns
    kestrel.from_pretrained(folder)  # a hit: the entry is mapped, not rebuilt
    assert os.stat(first).st_mtime_ns == built_at
    assert kestrel.engine_cache_path(str(folder), device="cuda") != first  # options are part of the key
    # Changing the checkpoint (new weights, same size) must not reuse the old engine.
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert kestrel.engine_cache_path(str(folder)) != first
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_epsilon"] = 1e-3
    (folder / "config.json").write_text(json.dumps(config))
    second = kestrel.engine_cache_path(str(folder))
    assert second != first
    kestrel.from_pretrained(folder)
    assert os.path.exists(second)


def test_cli_cache_option(gpt2_checkpoint, private_cache, kestrel_bin):
    env = {"KESTREL_CACHE": str(private_cache)}
    folder = gpt2_checkpoint[0]
    args = ("generate", folder, "--prompt-ids", "1,2", "--max-new-tokens", "3", "--json")
    uncached = run_kestrel(*args, "--no-cache", env=env).stdout
    assert not (private_cache / "engines").exists()
    assert run_kestrel(*args, env=env).stdout == uncached
    entries = list((private_cache / "engines").glob("*.kestrel"))
    assert len(entries) == 1
    assert run_kestrel(*args, env=env).stdout == uncached  # served from the entry
    assert run_kestrel("score", folder, "--ids", "1,2,3", "--json", env=env).returncode == 0
    assert list((private_cache / "engines").glob("*.kestrel")) == entries
    # An unwritable cache is not an error: the run builds in memory and says so.
    blocked = private_cache / "blocked"
    blocked.write_text("a file where the cache folder should be")
    r = run_kestrel(*args, env={"KESTREL_CACHE": str(blocked)})
    assert r.stdout == uncached and "building in memory" in r.stderr


def test_damaged_cache_entry_is_rebuilt(kestrel, gpt2_checkpoint):
    folder = gpt2_checkpoint[0]
    entry = kestrel.engine_cache_path(str(folder))
    kestrel.from_pretrained(folder)
    data = bytearray(open(entry, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(entry, "wb").write(bytes(data))
    model = kestrel.from_pretrained(folder)  # rebuilt, with a notice on stderr
    assert model(torch.tensor([[1, 2]])).logits.shape == (1, 2, 97)


@pytest.fixture
def engine(gpt2_checkpoint, tmp_path, kestrel_bin):
    path = tmp_path / "g.kestrel"
    run_kestrel("build", gpt2_checkpoint[0], "-o", path, "-q")
    return path


def expect_cli_error(model, *needles):
    r = run_kestrel("generate", model, "--prompt-ids", "1,2", "--max-new-tokens", "2", check=False)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line
    for n in needles:
        assert n in r.stderr, r.stderr


def test_truncated_engine(engine):
    data = engine.read_bytes()
    for keep in (10, 64, len(data) // 2, len(data) - 1):
        engine.write_bytes(data[:keep])
        expect_cli_error(engine, "truncated", "rebuild")


def test_corrupted_engine(engine, kestrel):
    data = bytearray(engine.read_bytes())
    data[4096] ^= 0x40  # inside the weights
    engine.write_bytes(bytes(data))
    expect_cli_error(engine, "corrupt", "rebuild")
    with pytest.raises(kestrel.KestrelError, match="corrupt.*rebuild"):
        kestrel.from_pretrained(engine)


def test_foreign_file(tmp_path, gpt2_checkpoint, kestrel):
    with pytest.raises(kestrel.KestrelError, match="not a Kestrel engine file"):
        kestrel._kestrel.Model.load(str(gpt2_checkpoint[0] / "model.safetensors"))
    junk = tmp_path / "junk.kestrel"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    expect_cli_error(junk, "not a Kestrel engine file")


def test_other_format_version(engine, kestrel):
    data = bytearray(engine.read_bytes())
    data[8] = 7
    engine.write_bytes(bytes(data))
    expect_cli_error(engine, "format version 7", "rebuild")


def test_engine_for_another_device(gpt2_checkpoint, tmp_path, kestrel, kestrel_bin):
    engine = tmp_path / "cuda.kestrel"
    run_kestrel("build", gpt2_checkpoint[0], "-o", engine, "--device", "cuda", "-q")
    with pytest.raises(kestrel.KestrelError, match="built for --device cuda.*rebuild"):
        kestrel.from_pretrained(engine, device="cpu").generate(torch.tensor([[1, 2]]), max_new_tokens=2)
    expect_cli_error(engine, "built for --device cuda", "--device cpu")


def test_bad_build_options(gpt2_checkpoint, tmp_path, kestrel_bin):
    r = run_kestrel("build", gpt2_checkpoint[0], "-o", tmp_path / "x.kestrel", "--precision", "fp16", check=False)
    assert r.returncode == 1 and "--precision fp16" in r.stderr
    r = run_kestrel("build", gpt2_checkpoint[0], "-o", tmp_path / "x.kestrel", "--device", "tpu", check=False)
    assert r.returncode == 1 and "--device tpu" in r.stderr
    assert not list(tmp_path.iterdir())


def test_unwritable_destination(gpt2_checkpoint, tmp_path, kestrel_bin):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        r = run_kestrel("build", gpt2_checkpoint[0], "-o", locked / "x.kestrel", check=False)
        assert r.returncode == 1 and "cannot create a file" in r.stderr
    finally:
        locked.chmod(0o700)


def test_full_disk_leaves_nothing(gpt2_checkpoint, tmp_path, kestrel_bin):
    """A file-size limit stands in for a full disk: the write fails part-way through the weights."""
    old = tmp_path / "g.kestrel"
    run_kestrel("build", gpt2_checkpoint[0], "-o", old, "-q")
    before = old.read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = subprocess.run([str(kestrel_path()), "build", str(gpt2_checkpoint[0]), "-o", str(old), "-q"],
                       capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 1, r.stderr
    assert "cannot write the engine file" in r.stderr and "File too large" in r.stderr, r.stderr
    assert old.read_bytes() == before  # the previous engine is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.kestrel"]  # and no temp file is left
