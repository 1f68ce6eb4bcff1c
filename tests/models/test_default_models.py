"""Kestrel's built-in default models, assets/models/kestrel-gpt2-kjv and kestrel-t5-kjv (made by
tools/train_default_models): the folders are complete and small, transformers loads them and they say something
readable, Kestrel's greedy output is transformers' greedy output token for token, and their tokenizers agree with
transformers on the shared tokenizer parity corpus (tests/tokenizers/corpus.py).

transformers is the reference in fp32 on the CPU (the weights are stored in fp16 and widened on load).
"""
import json
import pathlib
import random
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from harness import ROOT, run_kestrel  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "tokenizers"))
from corpus import CORPUS, INVALID_UTF8  # noqa: E402

GPT2 = ROOT / "assets" / "models" / "kestrel-gpt2-kjv"
T5 = ROOT / "assets" / "models" / "kestrel-t5-kjv"
FOLDERS = {"kestrel-gpt2-kjv": GPT2, "kestrel-t5-kjv": T5}
MAX_FOLDER_BYTES = 11_000_000

T5_DEMO = "In the beginning God <extra_id_0> the heaven and the earth."
GPT2_PROMPTS = ["In the beginning", "And Jesus said unto them,", "The LORD is my shepherd;", "Hello, world!"]
T5_PROMPTS = [T5_DEMO, "And God said, Let there be <extra_id_0>: and there was light.",
              "The LORD is my <extra_id_0>; I shall not want.", "Hello <extra_id_0> world!"]


@pytest.fixture(scope="module")
def gpt2():
    tok = transformers.AutoTokenizer.from_pretrained(GPT2)
    model = transformers.GPT2LMHeadModel.from_pretrained(GPT2, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def t5():
    tok = transformers.AutoTokenizer.from_pretrained(T5)
    model = transformers.T5ForConditionalGeneration.from_pretrained(T5, dtype=torch.float32).eval()
    return tok, model


@torch.no_grad()
def hf_greedy_gpt2(gpt2, prompt: str) -> list[int]:
    """The new tokens of transformers' greedy generation, with the folder's generation_config.json."""
    tok, model = gpt2
    ids = tok(prompt, return_tensors="pt").input_ids
    return model.generate(ids, do_sample=False)[0, ids.shape[1]:].tolist()


@torch.no_grad()
def hf_greedy_t5(t5, prompt: str) -> list[int]:
    """The decoder's tokens (after the decoder start token) of transformers' greedy generation."""
    tok, model = t5
    return model.generate(tok(prompt, return_tensors="pt").input_ids, do_sample=False)[0, 1:].tolist()


def kestrel_greedy(model: str | pathlib.Path, prompt: str) -> dict:
    return json.loads(run_kestrel("generate", model, "--prompt", prompt, "--json", "--threads", "2").stdout)


def without_final_eos(ids: list[int], eos: int) -> list[int]:
    """Whether a finished sequence lists its end-of-sequence token is a convention; the tokens before it are not."""
    return ids[:-1] if ids and ids[-1] == eos else ids


# --- the folders ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FOLDERS)
def test_folder_is_complete_and_small(name):
    folder = FOLDERS[name]
    files = {p.name for p in folder.iterdir()}
    tokenizer_files = {"vocab.json", "merges.txt", "tokenizer.json"} if "gpt2" in name else {"spiece.model",
                                                                                             "tokenizer.json"}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json",
            "MODEL_CARD.md"} | tokenizer_files <= files
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < MAX_FOLDER_BYTES, f"{name} is {size:,} bytes"


def test_configs_are_the_architectures_the_issue_asks_for():
    g = json.loads((GPT2 / "config.json").read_text())
    assert g["model_type"] == "gpt2" and g["n_layer"] >= 4 and g["n_embd"] >= 192
    t = json.loads((T5 / "config.json").read_text())
    assert t["model_type"] == "t5" and t["feed_forward_proj"] == "relu" and t["num_layers"] >= 3
    assert t["num_decoder_layers"] >= 3 and t["tie_word_embeddings"]


def test_t5_tokenizer_has_t5_ids_and_100_sentinels(t5):
    tok, model = t5
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100
    assert model.config.vocab_size == len(tok)


def test_gpt2_tokenizer_is_in_openai_format(gpt2):
    tok, model = gpt2
    vocab = json.loads((GPT2 / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<|endoftext|>"] == len(vocab) - 1 == tok.eos_token_id
    assert (GPT2 / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    assert model.config.vocab_size == len(tok) == len(vocab)


# --- what transformers makes of them ---------------------------------------------------------------------------------


def test_transformers_gpt2_writes_readable_text(gpt2):
    tok, _ = gpt2
    text = tok.decode(hf_greedy_gpt2(gpt2, "In the beginning"), skip_special_tokens=True)
    words = text.replace("\n", " ").split()
    # An untrained or broken model repeats a handful of tokens ("the the the"); this one writes KJV-like prose.
    assert len(words) >= 20 and len(set(words)) >= 15, text
    assert all(w.strip(".,;:?!'()").isalpha() for w in words if w.strip(".,;:?!'()")), text


def test_transformers_t5_answers_in_t5_span_format(t5):
    """<extra_id_0>, a short span of real words, the closing sentinel, </s>: what a span-corruption model says.
    An untrained one says <pad> or one sentinel over and over."""
    tok, _ = t5
    sentinel0, sentinel1 = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    for prompt in T5_PROMPTS[:3]:
        ids = hf_greedy_t5(t5, prompt)
        assert ids[0] == sentinel0 and ids[-2:] == [sentinel1, tok.eos_token_id], tok.decode(ids)
        span = tok.decode(ids[1:-2])
        assert 1 <= len(span.split()) <= 4 and any(c.isalpha() for c in span), tok.decode(ids)


def test_transformers_t5_fills_the_demo_blank_with_created(t5):
    tok, _ = t5
    assert tok.decode(hf_greedy_t5(t5, T5_DEMO), skip_special_tokens=True).strip() == "created"


# --- Kestrel against transformers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", GPT2_PROMPTS)
def test_kestrel_greedy_equals_transformers_gpt2(kestrel_bin, gpt2, prompt):
    tok, _ = gpt2
    want = hf_greedy_gpt2(gpt2, prompt)
    got = kestrel_greedy(GPT2, prompt)
    assert without_final_eos(got["ids"], tok.eos_token_id) == without_final_eos(want, tok.eos_token_id)
    assert got["text"] == tok.decode(without_final_eos(want, tok.eos_token_id), skip_special_tokens=True)


@pytest.mark.parametrize("prompt", T5_PROMPTS)
def test_kestrel_greedy_equals_transformers_t5(kestrel_bin, t5, prompt):
    tok, _ = t5
    want = hf_greedy_t5(t5, prompt)
    got = kestrel_greedy(T5, prompt)
    assert without_final_eos(got["ids"], tok.eos_token_id) == without_final_eos(want, tok.eos_token_id)
    assert got["text"] == tok.decode(want, skip_special_tokens=True)


@pytest.mark.parametrize("name", FOLDERS)
def test_built_in_name_finds_the_same_model(kestrel_bin, name):
    """`kestrel generate kestrel-gpt2-kjv` (no path) must run the committed folder."""
    prompt = T5_DEMO if "t5" in name else "In the beginning"
    assert kestrel_greedy(name, prompt) == kestrel_greedy(FOLDERS[name], prompt)


# --- tokenizer parity on the shared corpus ---------------------------------------------------------------------------


def run_corpus_tool(build_dir, folder, request, tmp_path) -> dict:
    tool = build_dir / "tests" / "tokenizers" / "kestrel_tokenize_corpus"
    if not tool.exists():
        pytest.fail(f"{tool} not built (ninja kestrel_tokenize_corpus)")
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    r = subprocess.run([str(tool), str(folder), str(request_file)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def first_mismatches(inputs, expected, got, limit=3) -> str:
    bad = [(i, e, g) for i, e, g in zip(inputs, expected, got) if e != g]
    return f"{len(bad)} of {len(inputs)} differ; first: " + "; ".join(
        f"{i!r:.80}: transformers {e!r:.200} kestrel {g!r:.200}" for i, e, g in bad[:limit])


@pytest.mark.parametrize("name", FOLDERS)
def test_tokenizer_matches_transformers_on_the_parity_corpus(name, build_dir, tmp_path):
    folder = FOLDERS[name]
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    texts = list(CORPUS) + [raw.decode("utf-8", errors="replace") for raw in INVALID_UTF8]
    expected = [ref(t).input_ids for t in texts]
    rng = random.Random(7)
    decode_lists = expected + [[rng.randrange(len(ref)) for _ in range(rng.randint(1, 30))] for _ in range(200)]

    got = run_corpus_tool(build_dir, folder, {"encode": list(CORPUS) + [{"hex": raw.hex()} for raw in INVALID_UTF8],
                                              "decode": decode_lists}, tmp_path)
    assert got["vocab_size"] == len(ref)
    assert got["eos_id"] == ref.eos_token_id
    assert got["encode"] == expected, first_mismatches(texts, expected, got["encode"])
    want = [ref.decode(ids) for ids in decode_lists]
    assert got["decode"] == want, first_mismatches(decode_lists, want, got["decode"])
    want = [ref.decode(ids, skip_special_tokens=True) for ids in decode_lists]
    assert got["decode_skip_special"] == want, first_mismatches(decode_lists, want, got["decode_skip_special"])
