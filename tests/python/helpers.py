"""The CLI helpers of tests/harness.py, and checks shared by the Python package tests (CPU and GPU)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from harness import kestrel_path, run_kestrel  # noqa: E402,F401


def cache_of(output):
    """A model output's cache: `cache` since transformers 5.24, `past_key_values` before."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


def assert_t5_logits_and_cache_match(model, ref, ids, mask, decoder):
    """A Kestrel T5 against transformers' `ref` on the same inputs: the logits of every decoder position, then
    the last position again through a cache made from the first two."""
    import torch
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    step = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder[:, :2], use_cache=True)
    nxt = model(decoder_input_ids=decoder[:, 2:], cache=cache_of(step))
    torch.testing.assert_close(nxt.logits[:, 0], expected[:, 2], rtol=1e-4, atol=1e-4)
