"""io/weights against real writers: checkpoints from transformers' save_pretrained, safetensors and torch.save are
read back by kestrel_dump_weights, and every tensor's dtype, shape and bytes (CRC-32) must match what torch reads.
Corrupt or hostile files must give a one-line error and exit code 1, never a crash."""
import json
import os
import pickle
import subprocess
import zipfile
import zlib

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


@pytest.fixture(scope="session")
def dump_bin(build_dir):
    p = build_dir / "tests" / "io" / "kestrel_dump_weights"
    if not p.exists():
        pytest.fail(f"{p} not built (ninja kestrel_dump_weights)")
    return p


def dump(dump_bin, path):
    r = subprocess.run([str(dump_bin), str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def dump_error(dump_bin, path):
    r = subprocess.run([str(dump_bin), str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, f"exit {r.returncode} (a negative code is a crash): {r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def describe(t):
    """What kestrel_dump_weights prints for a tensor: dtype, shape, CRC-32 of its row-major bytes."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "crc32": zlib.crc32(raw)}


def expect_same(dumped, state_dict):
    assert sorted(dumped["tensors"]) == sorted(state_dict)
    for name, t in state_dict.items():
        assert dumped["tensors"][name] == describe(t), name


def load_reference(folder):
    """Every tensor in a checkpoint folder as torch itself reads it."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(safetensors_torch.load_file(os.path.join(folder, f)))
        elif f.endswith(".bin"):
            out.update(torch.load(os.path.join(folder, f), map_location="cpu", weights_only=True))
    return out


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                                vocab_size=100, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_t5], ids=["gpt2", "t5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shard", [None, "40KB"], ids=["single", "sharded"])
def test_save_pretrained_safetensors(tmp_path, dump_bin, make, dtype, shard):
    model = make().to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **kwargs)
    index = tmp_path / "model.safetensors.index.json"
    if shard:
        assert index.exists(), "expected save_pretrained to shard"
        assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    else:
        assert (tmp_path / "model.safetensors").exists()
    dumped = dump(dump_bin, tmp_path)
    expect_same(dumped, load_reference(tmp_path))
    assert {t["dtype"] for t in dumped["tensors"].values()} == {DTYPE_NAMES[dtype]}


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_t5], ids=["gpt2", "t5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_torch_save_state_dict(tmp_path, dump_bin, make, dtype):
    # A full state dict, tied weights included: wte and lm_head share one storage.
    sd = make().to(dtype).state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    expect_same(dump(dump_bin, tmp_path), sd)


def test_torch_bin_sharded(tmp_path, dump_bin):
    sd = tiny_gpt2().state_dict()
    names = sorted(sd)
    halves = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in halves.items():
        torch.save({k: sd[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    dumped = dump(dump_bin, tmp_path)
    assert sorted(dumped["files"]) == sorted(halves)
    expect_same(dumped, sd)


def awkward_state_dict():
    """Views, strides, offsets, every dtype, scalars, empties and a Parameter: what torch.save may write."""
    torch.manual_seed(1)
    base = torch.randn(6, 8)
    return {
        "transposed": base.t(),
        "row_slice": base[2:4],
        "col_slice": base[:, 3:5],
        "strided": base[::2, ::3],
        "element": base[1, 1],
        "expanded": torch.randn(1, 4).expand(3, 4),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 7),
        "param": torch.nn.Parameter(torch.randn(3, 2)),
        "i64": torch.arange(-5, 5, dtype=torch.int64),
        "i32": torch.arange(7, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f16_view": torch.randn(4, 4).half()[1:, ::2],
        "bf16": torch.randn(5).bfloat16(),
    }


def test_torch_save_views_and_dtypes(tmp_path, dump_bin):
    sd = awkward_state_dict()
    torch.save(sd, tmp_path / "x.bin")
    expect_same(dump(dump_bin, tmp_path / "x.bin"), sd)


def rezip(src, dst, **kwargs):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", **kwargs) as zout:
        for info in zin.infolist():
            with zout.open(info.filename, "w", force_zip64=True) as out:
                out.write(zin.read(info.filename))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_torch_zip_variants(tmp_path, dump_bin, compression):
    # Python's zipfile with force_zip64 writes zip64 extra fields; deflate exercises the zlib path.
    sd = awkward_state_dict()
    torch.save(sd, tmp_path / "orig.bin")
    rezip(tmp_path / "orig.bin", tmp_path / "x.bin", compression=compression)
    expect_same(dump(dump_bin, tmp_path / "x.bin"), sd)


def test_shared_tiny_gpt2(shared_dir, dump_bin):
    folder = shared_dir / "models" / "tiny-gpt2-medical"
    if not (folder / "model.safetensors").exists():
        pytest.skip(f"{folder} is absent")
    expect_same(dump(dump_bin, folder), safetensors_torch.load_file(folder / "model.safetensors"))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/kestrel_pwned",))


def test_malicious_pickle_is_refused(tmp_path, dump_bin):
    torch.save({"w": torch.zeros(2), "evil": RunsCode()}, tmp_path / "pytorch_model.bin")
    msg = dump_error(dump_bin, tmp_path)
    assert "global 'posix.system' is not allowed" in msg
    assert "pytorch_model.bin" in msg


def test_legacy_torch_format(tmp_path, dump_bin):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert "legacy torch format" in dump_error(dump_bin, tmp_path)


def test_truncated_files_fail_cleanly(tmp_path, dump_bin):
    """Every prefix-truncation of a real file is an error with exit code 1, never a crash."""
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "st")
    torch.save(awkward_state_dict(), tmp_path / "t.bin")
    for src in [tmp_path / "st" / "model.safetensors", tmp_path / "t.bin"]:
        data = src.read_bytes()
        for cut in sorted({0, 4, 8, 9, 100, len(data) // 3, len(data) // 2, len(data) - 23, len(data) - 1}):
            bad = tmp_path / ("cut" + src.suffix)  # the suffix picks the loader
            bad.write_bytes(data[:cut])
            dump_error(dump_bin, bad)


def test_safetensors_corrupt_header_names_tensor(tmp_path, dump_bin):
    safetensors_torch.save_file({"h.0.attn.c_attn.weight": torch.zeros(4, 6)}, tmp_path / "model.safetensors")
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["h.0.attn.c_attn.weight"]["shape"] = [768, 2304]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (tmp_path / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + n:]))
    msg = dump_error(dump_bin, tmp_path)
    assert ("model.safetensors: tensor 'h.0.attn.c_attn.weight': data_offsets [0, 96] hold 96 bytes but shape "
            "[768, 2304] of F32 needs 7077888") in msg


def test_missing_weights(tmp_path, dump_bin):
    assert "no weights found" in dump_error(dump_bin, tmp_path)
