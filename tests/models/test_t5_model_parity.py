"""`kestrel score` on random T5 checkpoints against transformers: log p(target[i] | source, start + target[..i])
within 1e-4, over layers (encoder != decoder depth), heads, d_kv, FFN kinds, bucket settings (with sequences long
enough to reach the far, logarithmic buckets), tied/untied heads and dtypes."""
import json
import random

import pytest
import torch

from checkpoints import make_t5, t5_logprobs
from harness import run_kestrel

CASES = {
    "1l-1h-relu": dict(num_layers=1, num_decoder_layers=1, num_heads=1, d_model=40, d_kv=8),
    "2enc-3dec-4h-gated-gelu-b8-d16": dict(num_layers=2, num_decoder_layers=3, num_heads=4, d_model=72, d_kv=12,
                                           d_ff=100, feed_forward_proj="gated-gelu",
                                           relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "3enc-1dec-2h-b32-d20": dict(num_layers=3, num_decoder_layers=1, num_heads=2, relative_attention_max_distance=20),
    "2l-3h-gated-silu-b8-d128": dict(num_layers=2, num_heads=3, d_kv=5, feed_forward_proj="gated-silu",
                                     relative_attention_num_buckets=8),
}


def seq(n, vocab=101, seed=0):
    rng = random.Random(seed)
    return [rng.randrange(2, vocab) for _ in range(n)] + [1]  # ends in </s>, as tokenized targets do


def score(folder, source, target):
    out = run_kestrel("score", folder, "--source-ids", ",".join(map(str, source)), "--target-ids",
                      ",".join(map(str, target)), "--json", "--threads", "2")
    return json.loads(out.stdout)


def assert_parity(folder, model, source, target, check_spread=True):
    got = score(folder, source, target)
    want = t5_logprobs(model, source, target)
    assert got["ids"] == target and got["source_ids"] == source
    assert len(got["logprobs"]) == len(target)
    assert max(abs(a - b) for a, b in zip(got["logprobs"], want)) < 1e-4, (got["logprobs"], want)
    if check_spread:  # the comparison means something only if the model is far from uniform
        assert max(want) - min(want) > 0.5


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("t5")


@pytest.mark.parametrize("name", CASES)
def test_shapes(tmp, kestrel_bin, name):
    folder = tmp / name
    model = make_t5(folder, seed=1, **CASES[name])
    # 45 source and 40 target tokens: distances beyond max_distance 16 and well into the log buckets of 128.
    assert_parity(folder, model, seq(45, seed=2), seq(40, seed=3))


def test_untied_head_without_rescale(tmp, kestrel_bin):
    folder = tmp / "untied"
    model = make_t5(folder, seed=4, untied_head=True, feed_forward_proj="gated-gelu")
    assert not model.config.scale_decoder_outputs
    assert_parity(folder, model, seq(9, seed=5), seq(7, seed=6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_checkpoints(tmp, kestrel_bin, dtype):
    folder = tmp / f"dtype-{dtype}".replace("torch.", "")
    model = make_t5(folder, seed=7, dtype=dtype)
    assert_parity(folder, model, seq(11, seed=8), seq(6, seed=9))


def test_single_token_target_and_source(tmp, kestrel_bin):
    folder = tmp / "short"
    model = make_t5(folder, seed=10)
    assert_parity(folder, model, [1], [7, 1], check_spread=False)


def test_bad_input_is_a_clear_error(tmp, kestrel_bin):
    folder = tmp / "errors"
    make_t5(folder, seed=11)
    r = run_kestrel("score", folder, "--source-ids", "3,4", "--target-ids", "5,101", check=False)
    assert r.returncode == 1 and "outside the vocabulary" in r.stderr
    r = run_kestrel("score", folder, "--ids", "3,4", check=False)
    assert r.returncode == 1 and "--source" in r.stderr


def test_missing_relative_attention_bias(tmp, kestrel_bin):
    from safetensors.torch import load_file, save_file
    folder = tmp / "broken"
    make_t5(folder, seed=12)
    tensors = load_file(folder / "model.safetensors")
    name = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    r = run_kestrel("score", folder, "--source-ids", "3,4", "--target-ids", "5,1", check=False)
    assert r.returncode == 1 and name in r.stderr and "missing" in r.stderr


def test_undefined_bucket_settings_are_rejected(tmp, kestrel_bin):
    """max_distance must exceed the exact buckets (num_buckets / 2), or the log bucketing divides by zero."""
    folder = tmp / "bad-buckets"
    make_t5(folder, seed=13)
    config = json.loads((folder / "config.json").read_text())
    config["relative_attention_max_distance"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    r = run_kestrel("score", folder, "--source-ids", "3,4", "--target-ids", "5,1", check=False)
    assert r.returncode == 1 and "relative_attention_max_distance" in r.stderr
