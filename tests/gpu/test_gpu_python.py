"""The Python package on the GPU: kestrel.from_pretrained(..., device="cuda") in place of transformers' model.
Logits, KV-cache continuation, greedy and beam generate against transformers fp32 on the same GPU (TF32 off),
fp16 within the parity suite's tolerance, results on the GPU, and inputs left on the CPU.

Runs where torch sees a CUDA GPU and a `kestrel` package with the CUDA backend is importable: tests/gpu/run_all.sh
builds one on the GPU machine (tests/gpu/build_python_module.sh) and sets KESTREL_PY_REQUIRED=1, which makes a
package that does not import a failure instead of a skip.
"""
import os
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "models"))
sys.path.insert(0, str(HERE.parent / "python"))
import checkpoints as parity_checkpoints  # noqa: E402  (logits spread far apart: generate's ties are rare)
import gpu_models  # noqa: E402  (weights whose fp16 rounding stays within the parity suite's tolerance)
from helpers import assert_t5_logits_and_cache_match, cache_of  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

FP16_TOL = 0.15  # log-probs against transformers fp32, as test_gpu_parity.py
GPT2_BATCH = [[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 13, 14]]  # left padded (pad 0)
GPT2_PAD = [2, 0, 3]
T5_BATCH = [[5, 6, 7, 1, 0, 0], [8, 9, 10, 11, 12, 1], [13, 1, 0, 0, 0, 0]]  # right padded


@pytest.fixture(scope="module")
def kestrel():
    try:
        import kestrel as module
    except ImportError as e:
        if os.environ.get("KESTREL_PY_REQUIRED") == "1":
            pytest.fail(f"the kestrel package built for this run does not import: {e}")
        pytest.skip(f"no kestrel package ({e})")
    return module


@pytest.fixture(scope="module", autouse=True)
def setup(tmp_path_factory):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.environ["KESTREL_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(folder, transformers model on the GPU) by name: "gpt2" and "t5" (gated, untied head) for the fp32
    tests (heads of 80 and 32 bytes in fp32), "gpt2_fp16" and "t5_fp16" for the fp16 one."""
    from transformers import GPT2LMHeadModel, T5ForConditionalGeneration
    root = tmp_path_factory.mktemp("models")
    parity_checkpoints.make_gpt2(root / "gpt2", seed=1, pad_token_id=0, eos_token_id=2)
    parity_checkpoints.make_t5(root / "t5", seed=2, feed_forward_proj="gated-gelu", untied_head=True)
    gpu_models.small_gpt2(root / "gpt2_fp16", seed=3)
    gpu_models.small_t5(root / "t5_fp16", seed=4, gated=True)
    return {name: (root / name, (T5ForConditionalGeneration if name.startswith("t5") else GPT2LMHeadModel)
                   .from_pretrained(root / name).cuda().eval())
            for name in ("gpt2", "t5", "gpt2_fp16", "t5_fp16")}


def gpt2_inputs():
    ids = torch.tensor(GPT2_BATCH, device="cuda")
    mask = (torch.arange(5, device="cuda") >= torch.tensor(GPT2_PAD, device="cuda")[:, None]).long()
    return ids, mask


def t5_inputs():
    ids = torch.tensor(T5_BATCH, device="cuda")
    return ids, (ids != 0).long()


def test_model_lives_on_the_gpu(kestrel, checkpoints):
    model = kestrel.from_pretrained(checkpoints["gpt2"][0], device="cuda", precision="fp32")
    assert model.device.type == "cuda"
    ids, mask = gpt2_inputs()
    logits = model(ids, attention_mask=mask).logits
    assert logits.device.type == "cuda" and logits.dtype == torch.float32
    with pytest.raises(ValueError, match=r"to\('cuda'\)"):
        model(ids.cpu())


def test_gpt2_logits_and_cache_match_transformers(kestrel, checkpoints):
    folder, ref = checkpoints["gpt2"]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp32")
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], device="cuda")
    with torch.no_grad():
        expected = ref(ids).logits
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
    out = model(ids[:, :4], use_cache=True)
    step = model(ids[:, 4:], cache=cache_of(out))
    torch.testing.assert_close(step.logits[:, -1], expected[:, -1], rtol=1e-4, atol=1e-4)


def test_t5_logits_and_cache_match_transformers(kestrel, checkpoints):
    folder, ref = checkpoints["t5"]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp32")
    ids, mask = t5_inputs()
    assert_t5_logits_and_cache_match(model, ref, ids, mask,
                                     torch.tensor([[0, 4, 5], [0, 6, 7], [0, 8, 9]], device="cuda"))


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=12), dict(max_new_tokens=10, num_beams=3),
                                    dict(max_new_tokens=10, num_beams=4, num_return_sequences=2)],
                         ids=["greedy", "beams", "beams_returning_2"])
def test_generate_matches_transformers(kestrel, checkpoints, arch, kwargs):
    folder, ref = checkpoints[arch]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp32")
    ids, mask = gpt2_inputs() if arch == "gpt2" else t5_inputs()
    with torch.no_grad():
        expected = ref.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, **kwargs)
    got = model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, **kwargs)
    assert got.device.type == "cuda"
    assert torch.equal(got, expected), f"\n{got}\n{expected}"


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_greedy_rows_ending_at_different_steps_match_transformers(kestrel, checkpoints, arch):
    """Plain greedy runs each step ahead of the host (Session::greedy_ahead); a row that ends (its eos, picked
    from the middle of its own greedy output) leaves the session while the step after is already running."""
    folder, ref = checkpoints[arch]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp32")
    ids, mask = gpt2_inputs() if arch == "gpt2" else t5_inputs()
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=0, max_new_tokens=14)
    with torch.no_grad():
        free = ref.generate(ids, **kwargs)
    start = ids.shape[1] if arch == "gpt2" else 1
    eos = int(free[0, start + 4])  # row 0 ends at its fifth new token (or sooner); the others may run on
    with torch.no_grad():
        expected = ref.generate(ids, eos_token_id=eos, **kwargs)
    got = model.generate(ids, eos_token_id=eos, **kwargs)
    assert torch.equal(got, expected), f"\n{got}\n{expected}"
    assert torch.equal(model.generate(ids, **kwargs), free)  # the session after the rows left


def test_call_past_the_default_rows_opens_one_session(kestrel, checkpoints):
    """With the idle session held by a cache and no max_batch given, a call of 3 prompts × 4 beams (past CUDA's
    default 8 rows) opens one session planned for them, not the default first and then a larger one."""
    folder, ref = checkpoints["gpt2"]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp32")
    ids, mask = gpt2_inputs()
    held = cache_of(model(ids[1:2], use_cache=True))  # takes the session from_pretrained opened
    opened = model.native.sessions_opened
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=0, max_new_tokens=5, num_beams=4)
    got = model.generate(ids, **kwargs)
    assert model.native.sessions_opened == opened + 1
    with torch.no_grad():
        assert torch.equal(got, ref.generate(ids, **kwargs))
    del held


def test_session_planned_for_one_row_grows_for_beams(kestrel, checkpoints):
    """max_batch=1 plans one row on the GPU; a call of 3 prompts × 3 beams reopens the session for 9 rows, with
    the same tokens as transformers."""
    folder, ref = checkpoints["gpt2"]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp32", max_batch=1, max_length=32)
    ids, mask = gpt2_inputs()
    one = model.generate(ids[1:2], do_sample=False, pad_token_id=0, max_new_tokens=6)
    assert model.native.sessions_opened == 1
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=0, max_new_tokens=6, num_beams=3)
    with torch.no_grad():
        expected = ref.generate(ids, **kwargs)
        assert torch.equal(one, ref.generate(ids[1:2], do_sample=False, pad_token_id=0, max_new_tokens=6))
    assert torch.equal(model.generate(ids, **kwargs), expected)
    assert model.native.sessions_opened == 2


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_fp16_log_probs_close_to_transformers_fp32(kestrel, checkpoints, arch):
    folder, ref = checkpoints[arch + "_fp16"]
    model = kestrel.from_pretrained(folder, device="cuda", precision="fp16")
    if arch == "gpt2":  # right padded: real tokens keep their positions
        ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]], device="cuda")
        mask = (ids != 0).long()
        kw = dict(attention_mask=mask)
    else:
        ids, mask = t5_inputs()
        kw = dict(attention_mask=mask, decoder_input_ids=torch.tensor([[0, 4, 5]] * 3, device="cuda"))
    with torch.no_grad():
        expected = torch.log_softmax(ref(ids, **kw).logits, -1)
    got = torch.log_softmax(model(ids, **kw).logits, -1)
    keep = mask.bool() if arch == "gpt2" else torch.ones(got.shape[:2], dtype=torch.bool, device="cuda")
    err = (got - expected)[keep].abs().max().item()
    assert torch.isfinite(got).all() and err <= FP16_TOL, f"{arch} fp16 log-probs differ by {err}"
    ids, mask = gpt2_inputs() if arch == "gpt2" else t5_inputs()
    out = model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, max_new_tokens=8)
    assert out.device.type == "cuda" and out.shape[0] == 3
