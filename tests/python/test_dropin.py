"""The drop-in: Kestrel's models against transformers' on random checkpoints of both architectures — logits,
KV-cache semantics, greedy / beam / sampled generate, batches with attention masks, streamers, the fallback to
transformers' loop, and bad input."""
import warnings

import pytest
import torch
from helpers import assert_t5_logits_and_cache_match, cache_of
from transformers import GenerationConfig

GPT2_BATCH = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 13, 14]])  # left padded (pad 0)
GPT2_MASK = (torch.arange(5) >= torch.tensor([[2], [0], [3]])).long()
T5_BATCH = torch.tensor([[5, 6, 7, 1, 0, 0], [8, 9, 10, 11, 12, 1], [13, 1, 0, 0, 0, 0]])  # right padded
T5_MASK = (T5_BATCH != 0).long()


@pytest.fixture(scope="module")
def gpt2(kestrel, gpt2_checkpoint):
    folder, reference = gpt2_checkpoint
    return kestrel.from_pretrained(folder, cache=False), reference


@pytest.fixture(scope="module")
def t5(kestrel, t5_checkpoint):
    folder, reference = t5_checkpoint
    return kestrel.from_pretrained(folder, cache=False), reference


def test_gpt2_logits_match(gpt2):
    model, ref = gpt2
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # right padding: real tokens keep their positions
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
    got = model(ids, attention_mask=mask).logits
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=1e-4, atol=1e-4)
    assert not torch.equal(expected[0, 0], expected[0, 1])  # not a flat model


def test_gpt2_cache_continues_like_transformers(gpt2):
    model, ref = gpt2
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    out = model(ids, use_cache=True)
    step = model(torch.tensor([[11], [12]]), cache=cache_of(out))
    with torch.no_grad():
        full = ref(torch.cat([ids, torch.tensor([[11], [12]])], 1)).logits
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], rtol=1e-4, atol=1e-4)
    assert cache_of(out).get_seq_length() == 4
    assert cache_of(model(ids, use_cache=False)) is None


def test_t5_logits_match(t5):
    model, ref = t5
    assert_t5_logits_and_cache_match(model, ref, T5_BATCH, T5_MASK, torch.tensor([[0, 4, 5], [0, 6, 7], [0, 8, 9]]))


GENERATE_CASES = [
    dict(max_new_tokens=12),
    dict(max_new_tokens=10, num_beams=3),
    dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, length_penalty=0.5),
    dict(max_new_tokens=12, repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(max_length=11),
]


@pytest.mark.parametrize("kwargs", GENERATE_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_gpt2_generate_matches(gpt2, kwargs):
    model, ref = gpt2
    with torch.no_grad():
        expected = ref.generate(GPT2_BATCH, attention_mask=GPT2_MASK, do_sample=False, **kwargs)
    got = model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, do_sample=False, **kwargs)
    assert torch.equal(got, expected), f"\n{got}\n{expected}"


@pytest.mark.parametrize("kwargs", GENERATE_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_t5_generate_matches(t5, kwargs):
    model, ref = t5
    with torch.no_grad():
        expected = ref.generate(T5_BATCH, attention_mask=T5_MASK, do_sample=False, **kwargs)
    got = model.generate(input_ids=T5_BATCH, attention_mask=T5_MASK, do_sample=False, **kwargs)
    assert torch.equal(got, expected), f"\n{got}\n{expected}"


def test_generation_config_object(gpt2):
    model, ref = gpt2
    config = GenerationConfig(max_new_tokens=7, num_beams=2, pad_token_id=0, eos_token_id=2)
    with torch.no_grad():
        expected = ref.generate(GPT2_BATCH, attention_mask=GPT2_MASK, generation_config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all native: no fallback notice
        assert torch.equal(model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, generation_config=config), expected)


def test_settings_at_their_library_default_stay_native(gpt2):
    """typical_p 1.0, num_beam_groups 1, ... are what transformers uses when they are unset (some pipelines fill
    them in): they change nothing, so Kestrel's own loop runs."""
    model, ref = gpt2
    neutral = dict(typical_p=1.0, num_beam_groups=1, encoder_repetition_penalty=1.0, epsilon_cutoff=0.0)
    kwargs = dict(attention_mask=GPT2_MASK, max_new_tokens=6, num_beams=2, pad_token_id=0)
    with torch.no_grad():
        expected = ref.generate(GPT2_BATCH, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all native: no fallback notice
        assert torch.equal(model.generate(GPT2_BATCH, **kwargs, **neutral), expected)
    with pytest.warns(UserWarning, match="typical_p not run natively"):
        model.generate(GPT2_BATCH, **kwargs, typical_p=0.9)


def test_sampling_follows_torch_seed(gpt2):
    model, _ = gpt2
    kwargs = dict(attention_mask=GPT2_MASK, do_sample=True, top_k=20, top_p=0.9, temperature=0.8,
                  max_new_tokens=10)
    torch.manual_seed(5)
    a = model.generate(GPT2_BATCH, **kwargs)
    torch.manual_seed(5)
    b = model.generate(GPT2_BATCH, **kwargs)
    assert torch.equal(a, b) and a.shape[0] == 3 and torch.equal(a[:, :5], GPT2_BATCH)
    draws = {tuple(model.generate(GPT2_BATCH, **kwargs)[1].tolist()) for _ in range(5)}
    assert len(draws) > 1  # actually sampling


def test_streamer_sees_prompt_then_tokens(gpt2):
    model, ref = gpt2

    class Collect:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            self.ended = True

    ours, theirs = Collect(), Collect()
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(ids, max_new_tokens=6, streamer=ours)
    with torch.no_grad():
        ref.generate(ids, max_new_tokens=6, streamer=theirs)
    assert ours.puts == theirs.puts and ours.ended
    assert sum(ours.puts[1:], []) == out[0, 3:].tolist()


def test_unsupported_option_falls_back_with_a_notice(gpt2, t5):
    for (model, ref), ids, attention in ((gpt2, GPT2_BATCH, GPT2_MASK), (t5, T5_BATCH, T5_MASK)):
        kwargs = dict(attention_mask=attention, max_new_tokens=8, num_beams=2, bad_words_ids=[[3], [4]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = model.generate(ids, **kwargs)
        notices = [str(w.message) for w in caught if "kestrel" in str(w.message)]
        assert len(notices) == 1 and "bad_words_ids" in notices[0]
        with torch.no_grad():
            assert torch.equal(got, ref.generate(ids, **kwargs))


def test_unknown_generate_argument(gpt2):
    model, ref = gpt2
    with pytest.raises(ValueError, match=r"not used by the model: \['max_new_tokenz'\]"):
        model.generate(GPT2_BATCH, max_new_tokenz=3)
    with pytest.raises(ValueError, match="max_new_tokenz"):
        ref.generate(GPT2_BATCH, max_new_tokenz=3)


def test_wrong_dtype_and_device(gpt2, kestrel):
    model, _ = gpt2
    with pytest.raises(TypeError, match="integer token ids"):
        model(GPT2_BATCH.float())
    with pytest.raises(ValueError, match="is on meta but the Kestrel model runs on cpu"):
        model.generate(GPT2_BATCH.to("meta"))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(GPT2_BATCH, attention_mask=GPT2_MASK[:, :3])
    with pytest.raises(kestrel.KestrelError, match="outside the vocabulary"):
        model.generate(torch.tensor([[5, 1000]]), max_new_tokens=2)


def test_logits_share_memory_with_the_native_result(gpt2):
    model, _ = gpt2
    logits = model(torch.tensor([[5, 6, 7]])).logits
    # torch.from_numpy over the engine's own buffer: no copy was made on the way out.
    assert logits.untyped_storage().nbytes() == 3 * 97 * 4


def test_calls_reuse_the_idle_session(kestrel, gpt2_checkpoint):
    """Opening a session plans its memory (and on CUDA uploads every weight), so forwards and generate calls
    take the model's idle session and give it back; a cache keeps its own until it is dropped, and results do
    not depend on which session a call got."""
    folder, reference = gpt2_checkpoint
    model = kestrel.from_pretrained(folder, cache=False)
    first = model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=6, do_sample=False)
    for _ in range(3):
        assert torch.equal(model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=6,
                                          do_sample=False), first)
        model(GPT2_BATCH[1:2])
    assert model.native.sessions_opened == 1
    held = cache_of(model(GPT2_BATCH[1:2], use_cache=True))  # keeps the session: the next call opens another
    again = model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=6, do_sample=False)
    assert torch.equal(again, first) and model.native.sessions_opened == 2
    del held
    with torch.no_grad():
        expected = reference.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=6, do_sample=False,
                                      num_beams=3)
    assert torch.equal(model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=6, do_sample=False,
                                      num_beams=3), expected)
    assert model.native.sessions_opened == 2  # the larger of the two idle ones was kept


def test_engine_max_batch_grows_for_larger_calls(kestrel, gpt2_checkpoint, tmp_path):
    """An engine built for 2 rows still takes a call of 3 prompts × 3 beams: the session is reopened larger."""
    folder, reference = gpt2_checkpoint
    engine = tmp_path / "two.kestrel"
    kestrel.build_engine(folder, engine, max_batch=2)
    model = kestrel.from_pretrained(engine)
    with torch.no_grad():
        expected = reference.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=5, do_sample=False,
                                      num_beams=3)
    got = model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=5, do_sample=False, num_beams=3)
    assert torch.equal(got, expected)
    assert model.native.sessions_opened == 1  # for max(9, 2 × 2) rows
    model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=2, do_sample=False, num_beams=4)
    assert model.native.sessions_opened == 2  # 12 rows: max(12, 2 × 9)
    model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=2, do_sample=False, num_beams=5)
    assert model.native.sessions_opened == 2  # 15 rows fit in 18


def test_max_batch_plans_the_session(kestrel, gpt2_checkpoint):
    """from_pretrained(max_batch=n) plans n rows; a call with more reopens the session larger."""
    folder, _ = gpt2_checkpoint
    model = kestrel.from_pretrained(folder, max_batch=2)
    model.generate(GPT2_BATCH[:2], attention_mask=GPT2_MASK[:2], max_new_tokens=2, do_sample=False)
    assert model.native.sessions_opened == 1
    model.generate(GPT2_BATCH, attention_mask=GPT2_MASK, max_new_tokens=2, do_sample=False)
    assert model.native.sessions_opened == 2  # 3 rows: max(3, 2 × 2)
    with pytest.raises(kestrel.KestrelError, match="max_batch must be >= 0"):
        kestrel.from_pretrained(folder, max_batch=-1)


def test_cuda_without_a_gpu_fails_at_load(kestrel, gpt2_checkpoint):
    """device="cuda" opens the model's session (uploads the weights) in from_pretrained, so a machine or build
    without a usable GPU says so there, with what to do, instead of at the first call."""
    import torch as t
    if t.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(kestrel.KestrelError, match=r"--device cuda: .*use --device cpu"):
        kestrel.from_pretrained(gpt2_checkpoint[0], device="cuda", cache=False)
