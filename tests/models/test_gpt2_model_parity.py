"""`kestrel score` on random GPT-2 checkpoints against transformers (fp32, torch CPU): every log-probability
within 1e-4, over a matrix of shapes, activations, heads and dtypes."""
import json
import random

import pytest
import torch

from checkpoints import gpt2_logprobs, make_gpt2
from harness import run_kestrel

CASES = {
    "1l-1h-40": dict(n_layer=1, n_head=1, n_embd=40),
    "2l-4h-72-inner-untied": dict(n_layer=2, n_head=4, n_embd=72, n_inner=100, tie_word_embeddings=False),
    "3l-2h-40-inverse-layer-scale": dict(n_layer=3, n_head=2, n_embd=40, scale_attn_by_inverse_layer_idx=True),
    "2l-2h-unscaled": dict(n_layer=2, n_head=2, n_embd=40, scale_attn_weights=False),
    "hd64-folded-scale": dict(n_layer=1, n_head=2, n_embd=128),  # 1/sqrt(64) is folded into Q by build/
}
ACTIVATIONS = ["gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate", "quick_gelu", "relu", "silu",
               "tanh", "sigmoid", "linear"]


def score(folder, ids):
    out = run_kestrel("score", folder, "--ids", ",".join(map(str, ids)), "--json", "--threads", "2")
    return json.loads(out.stdout)


def assert_parity(folder, model, ids):
    got = score(folder, ids)
    want = gpt2_logprobs(model, ids)
    assert got["ids"] == ids
    assert len(got["logprobs"]) == len(ids) - 1
    assert max(abs(a - b) for a, b in zip(got["logprobs"], want)) < 1e-4, (got["logprobs"], want)
    # The test means something only if the model is far from uniform.
    assert max(want) - min(want) > 0.5


def ids_for(n, vocab=97, seed=0):
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("gpt2")


@pytest.mark.parametrize("name", CASES)
def test_shapes(tmp, kestrel_bin, name):
    folder = tmp / name
    model = make_gpt2(folder, seed=1, **CASES[name])
    assert_parity(folder, model, ids_for(30, seed=2))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations(tmp, kestrel_bin, act):
    folder = tmp / f"act-{act}"
    model = make_gpt2(folder, seed=3, n_layer=1, activation_function=act)
    assert_parity(folder, model, ids_for(12, seed=4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_checkpoints(tmp, kestrel_bin, dtype):
    folder = tmp / f"dtype-{dtype}".replace("torch.", "")
    make_gpt2(folder, seed=5, dtype=dtype)
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    assert_parity(folder, model, ids_for(16, seed=6))


def test_bare_gpt2model_checkpoint(tmp, kestrel_bin):
    """GPT2Model's names have no "transformer." prefix; the head is tied to wte."""
    folder = tmp / "bare"
    model = make_gpt2(folder, seed=7, bare=True)
    assert_parity(folder, model, ids_for(10, seed=8))


def test_full_context(tmp, kestrel_bin):
    folder = tmp / "ctx"
    model = make_gpt2(folder, seed=9, n_positions=24)
    assert_parity(folder, model, ids_for(24, seed=10))
    r = run_kestrel("score", folder, "--ids", ",".join(map(str, ids_for(25))), check=False)
    assert r.returncode == 1 and "n_positions" in r.stderr


def test_bad_input_is_a_clear_error(tmp, kestrel_bin):
    folder = tmp / "errors"
    make_gpt2(folder, seed=11)
    r = run_kestrel("score", folder, "--ids", "1,97", check=False)
    assert r.returncode == 1 and "outside the vocabulary" in r.stderr
    r = run_kestrel("score", folder, "--ids", "", check=False)
    assert r.returncode == 1 and "error" in r.stderr
    r = run_kestrel("score", folder, "--ids", "1,2", "--device", "cuda", check=False)
    assert r.returncode == 1 and "cpu" in r.stderr


def test_missing_and_misshapen_tensors(tmp, kestrel_bin):
    from safetensors.torch import load_file, save_file
    folder = tmp / "broken"
    make_gpt2(folder, seed=12)
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    r = run_kestrel("score", folder, "--ids", "1,2", check=False)
    assert r.returncode == 1 and "transformer.h.1.mlp.c_fc.weight" in r.stderr and "missing" in r.stderr

    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(40, 7)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    r = run_kestrel("score", folder, "--ids", "1,2", check=False)
    assert r.returncode == 1 and "[40, 7]" in r.stderr and "[40, 160]" in r.stderr


def test_untied_head_without_lm_head_is_an_error(tmp, kestrel_bin):
    from safetensors.torch import load_file, save_file
    folder = tmp / "untied-missing"
    make_gpt2(folder, seed=13, tie_word_embeddings=False)
    tensors = load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    r = run_kestrel("score", folder, "--ids", "1,2", check=False)
    assert r.returncode == 1 and "lm_head.weight" in r.stderr


def test_real_tiny_checkpoint(shared_dir, kestrel_bin):
    folder = shared_dir / "models" / "tiny-gpt2-medical"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    ids = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]
    got = score(folder, ids)
    want = gpt2_logprobs(model, ids)
    assert max(abs(a - b) for a, b in zip(got["logprobs"], want)) < 1e-4


def test_text_input_uses_the_tokenizer(shared_dir, kestrel_bin):
    folder = shared_dir / "models" / "tiny-gpt2-medical"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    from transformers import AutoTokenizer, GPT2LMHeadModel
    text = "The patient was given aspirin."
    ids = AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    got = json.loads(run_kestrel("score", folder, "--text", text, "--json").stdout)
    assert got["ids"] == ids
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    assert max(abs(a - b) for a, b in zip(got["logprobs"], gpt2_logprobs(model, ids))) < 1e-4
