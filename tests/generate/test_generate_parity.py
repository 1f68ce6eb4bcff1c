"""`kestrel generate` against transformers' generate() on small random GPT-2 and T5 checkpoints.

Token ids must match exactly for greedy decoding, beam search and the logits processors; sampling (Kestrel has its
own RNG) is compared statistically. Weights are perturbed so logits are far from flat and near-ties are rare.
"""
import json
import math
import pathlib
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from harness import run_kestrel  # noqa: E402

VOCAB = 96
PROMPTS = [[1, 2, 3], [7], [10, 20, 30, 40, 50]]


def _perturb(model, std, matrices_only=False):
    """Large random weights give peaked, varied logits. GPT-2 keeps its 1-D parameters (layer norms, biases): a
    random final layer-norm bias makes one token win whatever the input."""
    torch.manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 or not matrices_only:
                p.normal_(0.0, std)
    return model.eval()


def _with_eos(src: pathlib.Path, dst: pathlib.Path, eos):
    """A copy of a checkpoint folder whose config and generation config use other eos id(s)."""
    shutil.copytree(src, dst)
    for name in ("config.json", "generation_config.json"):
        p = dst / name
        j = json.loads(p.read_text())
        j["eos_token_id"] = eos
        p.write_text(json.dumps(j))
    return dst


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    d = tmp_path_factory.mktemp("gen") / "gpt2"
    _perturb(transformers.GPT2LMHeadModel(cfg), 0.4, matrices_only=True).save_pretrained(d)
    return d


def _frequent_token(model_dir, prompt, is_t5=False):
    """An eos id greedy decoding reaches after a few tokens (not at once), so eos tests stop mid-way."""
    m = _load(model_dir, is_t5)
    out = m.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0].tolist()
    new = out[1:] if is_t5 else out[len(prompt):]
    for i in range(2, len(new)):
        if new[i] not in new[:i]:
            return new[i]
    return new[2]


@pytest.fixture(scope="session")
def gpt2_eos_dir(gpt2_dir, tmp_path_factory):
    eos = _frequent_token(gpt2_dir, PROMPTS[0])
    return _with_eos(gpt2_dir, tmp_path_factory.mktemp("gen") / "gpt2_eos", eos)


@pytest.fixture(scope="session")
def gpt2_two_eos_dir(gpt2_dir, tmp_path_factory):
    a = _frequent_token(gpt2_dir, PROMPTS[0])
    b = _frequent_token(gpt2_dir, PROMPTS[2])
    if b == a:
        b = (a + 1) % VOCAB
    return _with_eos(gpt2_dir, tmp_path_factory.mktemp("gen") / "gpt2_two_eos", [a, b])


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    d = tmp_path_factory.mktemp("gen") / "t5"
    # T5 scales its tied output by d_model**-0.5: larger weights keep its logits from being nearly flat.
    _perturb(transformers.T5ForConditionalGeneration(cfg), 1.0).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def t5_eos_dir(t5_dir, tmp_path_factory):
    eos = _frequent_token(t5_dir, PROMPTS[0], is_t5=True)
    return _with_eos(t5_dir, tmp_path_factory.mktemp("gen") / "t5_eos", eos)


_MODELS = {}


def _load(model_dir, is_t5=False):
    key = str(model_dir)
    if key not in _MODELS:
        cls = transformers.T5ForConditionalGeneration if is_t5 else transformers.GPT2LMHeadModel
        _MODELS[key] = cls.from_pretrained(model_dir).eval()
    return _MODELS[key]


def hf_generate(model_dir, prompt, is_t5=False, **kw):
    """New tokens of each returned sequence (transformers' padded rows), plus beam scores if any."""
    m = _load(model_dir, is_t5)
    with torch.no_grad():
        out = m.generate(torch.tensor([prompt]), do_sample=False, return_dict_in_generate=True, output_scores=True,
                         **kw)
    start = 1 if is_t5 else len(prompt)
    seqs = [row[start:] for row in out.sequences.tolist()]
    scores = out.sequences_scores.tolist() if getattr(out, "sequences_scores", None) is not None else None
    return seqs, scores


def kestrel_generate(model_dir, prompts, *opts):
    args = ["generate", model_dir, "--json"]
    for p in prompts:
        args += ["--prompt-ids", ",".join(map(str, p))]
    r = run_kestrel(*args, *map(str, opts))
    out = json.loads(r.stdout)
    return out if isinstance(out, list) else [out]


def beam_fill(model_dir):
    """transformers' beam output filler: `pad_token_id or eos_token_id[0]` (a pad id of 0 counts as missing)."""
    g = json.loads((pathlib.Path(model_dir) / "generation_config.json").read_text())
    c = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    eos = g.get("eos_token_id", c.get("eos_token_id"))
    eos = eos if isinstance(eos, list) else [eos]
    pad = g.get("pad_token_id", c.get("pad_token_id"))
    return pad or eos[0]


def padded(rows, width, fill):
    return [r + [fill] * (width - len(r)) for r in rows]


def hf_options(opts):
    """The transformers kwargs for a list of kestrel CLI options."""
    kw = {}
    it = iter(opts)
    for flag in it:
        key = flag[2:].replace("-", "_")
        val = next(it)
        if key == "early_stopping":
            val = {"true": True, "false": False, "never": "never"}[val]
        elif key in ("length_penalty", "repetition_penalty"):
            val = float(val)
        else:
            val = int(val)
        kw[key] = val
    return kw


def check_parity(model_dir, prompt, opts, is_t5=False):
    kw = hf_options(opts)
    want, want_scores = hf_generate(model_dir, prompt, is_t5, **kw)
    got = kestrel_generate(model_dir, [prompt], *opts)
    got_ids = [g["ids"] for g in got]
    if kw.get("num_beams", 1) > 1:
        got_ids = padded(got_ids, len(want[0]), beam_fill(model_dir))
        for g, s in zip(got, want_scores):
            assert g["score"] == pytest.approx(s, abs=2e-3)
    assert got_ids == want, f"{opts} prompt {prompt}"


# ---- greedy ----

@pytest.mark.parametrize("prompt", PROMPTS)
def test_gpt2_greedy_matches_transformers(gpt2_dir, prompt):
    check_parity(gpt2_dir, prompt, ["--max-new-tokens", "12"])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_gpt2_greedy_stops_at_eos(gpt2_eos_dir, prompt):
    check_parity(gpt2_eos_dir, prompt, ["--max-new-tokens", "12"])


def test_gpt2_greedy_stops_at_either_of_two_eos(gpt2_two_eos_dir):
    for p in PROMPTS:
        check_parity(gpt2_two_eos_dir, p, ["--max-new-tokens", "12"])


def test_default_length_is_twenty_new_tokens_clamped_to_positions(gpt2_dir):
    got = kestrel_generate(gpt2_dir, [PROMPTS[0]])
    want, _ = hf_generate(gpt2_dir, PROMPTS[0])
    assert got[0]["ids"] == want[0] and len(want[0]) == 20
    long_prompt = list(range(1, 31))  # 30 tokens, n_positions 40: transformers clamps the total to 40
    got = kestrel_generate(gpt2_dir, [long_prompt])
    want, _ = hf_generate(gpt2_dir, long_prompt)
    assert got[0]["ids"] == want[0] and len(want[0]) == 10


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_t5_greedy_matches_transformers(t5_dir, t5_eos_dir, prompt):
    check_parity(t5_dir, prompt, ["--max-new-tokens", "10"], is_t5=True)
    check_parity(t5_eos_dir, prompt, ["--max-new-tokens", "10"], is_t5=True)


# ---- processors ----

PROCESSOR_CASES = [
    ["--max-new-tokens", "12", "--repetition-penalty", "1.8"],
    ["--max-new-tokens", "12", "--repetition-penalty", "0.7"],
    ["--max-new-tokens", "14", "--no-repeat-ngram-size", "2"],
    ["--max-new-tokens", "14", "--no-repeat-ngram-size", "1"],
    ["--max-new-tokens", "10", "--min-new-tokens", "6"],
    ["--max-new-tokens", "12", "--min-new-tokens", "3", "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3"],
]


@pytest.mark.parametrize("opts", PROCESSOR_CASES)
def test_gpt2_processors_match_transformers(gpt2_eos_dir, opts):
    for p in PROMPTS:
        check_parity(gpt2_eos_dir, p, opts)


@pytest.mark.parametrize("opts", PROCESSOR_CASES[::2])
def test_t5_processors_match_transformers(t5_eos_dir, opts):
    check_parity(t5_eos_dir, PROMPTS[0], opts, is_t5=True)


# ---- beam search ----

BEAM_CASES = [
    ["--num-beams", "2"],
    ["--num-beams", "3", "--num-return-sequences", "3", "--length-penalty", "0.0", "--early-stopping", "never"],
    ["--num-beams", "4", "--num-return-sequences", "2", "--length-penalty", "2.0", "--early-stopping", "true"],
    ["--num-beams", "4", "--num-return-sequences", "4", "--length-penalty", "-1.0", "--early-stopping", "false"],
    ["--num-beams", "5", "--num-return-sequences", "2", "--length-penalty", "1.5", "--early-stopping", "never"],
    ["--num-beams", "3", "--num-return-sequences", "2", "--no-repeat-ngram-size", "2", "--repetition-penalty", "1.4"],
    ["--num-beams", "3", "--min-new-tokens", "5"],
]


@pytest.mark.parametrize("opts", BEAM_CASES)
def test_gpt2_beam_search_matches_transformers(gpt2_eos_dir, opts):
    for p in PROMPTS:
        check_parity(gpt2_eos_dir, p, ["--max-new-tokens", "9", *opts])


@pytest.mark.parametrize("opts", BEAM_CASES[:5:2])
def test_gpt2_beam_search_with_two_eos_ids(gpt2_two_eos_dir, opts):
    for p in PROMPTS:
        check_parity(gpt2_two_eos_dir, p, ["--max-new-tokens", "9", *opts])


def test_gpt2_beam_search_without_eos_hits(gpt2_dir):
    check_parity(gpt2_dir, PROMPTS[0], ["--max-new-tokens", "8", "--num-beams", "3", "--num-return-sequences", "3"])


@pytest.mark.parametrize("opts", BEAM_CASES[:5])
def test_t5_beam_search_matches_transformers(t5_eos_dir, opts):
    for p in PROMPTS[:2]:
        check_parity(t5_eos_dir, p, ["--max-new-tokens", "8", *opts], is_t5=True)


# ---- batches ----

@pytest.mark.parametrize("opts", [["--max-new-tokens", "10"],
                                  ["--max-new-tokens", "8", "--num-beams", "3", "--num-return-sequences", "2"],
                                  ["--max-new-tokens", "8", "--do-sample", "--seed", "3",
                                   "--num-return-sequences", "2"]])
@pytest.mark.parametrize("which", ["gpt2_eos_dir", "t5_eos_dir"])
def test_batched_prompts_equal_each_alone(which, opts, request):
    model_dir = request.getfixturevalue(which)
    batched = kestrel_generate(model_dir, PROMPTS, *opts)
    per_prompt = len(batched) // len(PROMPTS)
    for i, p in enumerate(PROMPTS):
        alone = kestrel_generate(model_dir, [p], *opts)
        got = batched[i * per_prompt:(i + 1) * per_prompt]
        assert [g["prompt"] for g in got] == [i] * per_prompt
        if "--do-sample" in opts:
            continue  # each sample stream is seeded by its position in the batch
        assert [g["ids"] for g in got] == [a["ids"] for a in alone]


# ---- sampling (statistics only: Kestrel has its own RNG) ----

def test_sampling_is_deterministic_for_a_seed(gpt2_dir):
    opts = ["--max-new-tokens", "10", "--do-sample", "--top-k", "0"]
    a = kestrel_generate(gpt2_dir, [PROMPTS[0]], *opts, "--seed", "11")
    b = kestrel_generate(gpt2_dir, [PROMPTS[0]], *opts, "--seed", "11")
    c = kestrel_generate(gpt2_dir, [PROMPTS[0]], *opts, "--seed", "12", "--num-return-sequences", "4")
    assert a == b
    assert any(x["ids"] != a[0]["ids"] for x in c)


def test_sampling_top_k_one_and_tiny_top_p_are_greedy(gpt2_dir):
    greedy = kestrel_generate(gpt2_dir, [PROMPTS[2]], "--max-new-tokens", "10")[0]["ids"]
    for seed in ("1", "2"):
        k1 = kestrel_generate(gpt2_dir, [PROMPTS[2]], "--max-new-tokens", "10", "--do-sample", "--top-k", "1",
                              "--seed", seed)
        p0 = kestrel_generate(gpt2_dir, [PROMPTS[2]], "--max-new-tokens", "10", "--do-sample", "--top-p", "1e-6",
                              "--top-k", "0", "--seed", seed)
        assert k1[0]["ids"] == greedy and p0[0]["ids"] == greedy


def _next_token_probs(model_dir, prompt, temperature=1.0, top_k=0):
    m = _load(model_dir)
    with torch.no_grad():
        logits = m(torch.tensor([prompt])).logits[0, -1] / temperature
    if top_k:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.softmax(logits, -1).tolist()


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.6, 0), (1.5, 5)])
def test_first_sampled_token_follows_the_model_distribution(gpt2_dir, temperature, top_k):
    n = 1500
    got = kestrel_generate(gpt2_dir, [PROMPTS[0]], "--max-new-tokens", "1", "--do-sample", "--seed", "5",
                           "--num-return-sequences", str(n), "--temperature", str(temperature), "--top-k",
                           str(top_k))
    probs = _next_token_probs(gpt2_dir, PROMPTS[0], temperature, top_k)
    counts = [0] * VOCAB
    for g in got:
        counts[g["ids"][0]] += 1
    for tok, p in enumerate(probs):
        if p == 0:
            assert counts[tok] == 0, f"token {tok} is outside top-k but was sampled"
            continue
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[tok] / n - p) <= 5 * sd + 2e-3, f"token {tok}: {counts[tok] / n} vs {p}"


def test_beam_sampling_runs_and_is_seeded(gpt2_eos_dir):
    opts = ["--max-new-tokens", "8", "--num-beams", "3", "--do-sample", "--seed", "4", "--num-return-sequences", "2"]
    a = kestrel_generate(gpt2_eos_dir, [PROMPTS[0]], *opts)
    assert a == kestrel_generate(gpt2_eos_dir, [PROMPTS[0]], *opts)
    assert a[0]["score"] >= a[1]["score"]


# ---- bad input: a clear error, non-zero exit, nothing on stdout ----

BAD = [
    (["--num-beams", "0"], "num_beams"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--do-sample", "--temperature", "0"], "temperature"),
    (["--top-k", "-1"], "top_k"),
    (["--num-beams", "2", "--num-return-sequences", "3"], "num_return_sequences"),
    (["--num-return-sequences", "2"], "greedy"),
    (["--max-new-tokens", "-1"], "max_new_tokens"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--min-new-tokens", "-1"], "min_new_tokens"),
    (["--repetition-penalty", "0"], "repetition_penalty"),
    (["--early-stopping", "maybe"], "--early-stopping"),
    (["--device", "tpu"], "--device"),
    (["--threads", "-2"], "--threads"),
    (["--max-new-tokens", "39"], "positions"),  # 3 + 39 - 1 > n_positions 40
]


@pytest.mark.parametrize("opts,needle", BAD)
def test_bad_options_fail_cleanly(gpt2_dir, opts, needle):
    r = run_kestrel("generate", gpt2_dir, "--prompt-ids", "1,2,3", *opts, check=False)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("prompt_args,needle", [
    (["--prompt-ids", ""], "empty"),
    (["--prompt-ids", "1,96"], "outside the vocabulary"),
    (["--prompt-ids", "1,x"], "not a list"),
    (["--prompt-ids", ",".join(["5"] * 41)], "at most 40 positions"),
    (["--prompt-ids", "1", "--prompt", "hi"], "not both"),
])
def test_bad_prompts_fail_cleanly(gpt2_dir, prompt_args, needle):
    r = run_kestrel("generate", gpt2_dir, *prompt_args, check=False)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert needle in r.stderr, r.stderr


def test_text_prompt_without_tokenizer_is_a_clear_error(gpt2_dir):
    r = run_kestrel("generate", gpt2_dir, "--prompt", "hello", check=False)
    assert r.returncode == 1 and r.stdout == "" and "tokenizer" in r.stderr


# ---- text, streaming and the real tokenizer ----

def test_ids_only_text_output_without_tokenizer(gpt2_dir):
    r = run_kestrel("generate", gpt2_dir, "--prompt-ids", "1,2,3", "--max-new-tokens", "6")
    want, _ = hf_generate(gpt2_dir, [1, 2, 3], max_new_tokens=6)
    assert r.stdout == " ".join(map(str, want[0])) + "\n"


def test_text_streams_and_matches_transformers_decode(shared_dir, tmp_path):
    model_dir = shared_dir / "models" / "tiny-gpt2-medical"
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    prompt = "The patient was given"
    ids = tok(prompt)["input_ids"]
    m = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = m.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    want = tok.decode(out, skip_special_tokens=True)
    r = run_kestrel("generate", model_dir, "--prompt", prompt, "--max-new-tokens", "12")
    assert r.stdout == want + "\n"
    j = json.loads(run_kestrel("generate", model_dir, "--prompt", prompt, "--max-new-tokens", "12", "--json").stdout)
    assert j["ids"] == out and j["text"] == want
    # stdin gives the same prompt (its trailing newline dropped)
    r2 = run_kestrel("generate", model_dir, "--max-new-tokens", "12", input=prompt + "\n")
    assert r2.stdout == r.stdout


def test_several_results_are_printed_in_blocks(gpt2_dir):
    r = run_kestrel("generate", gpt2_dir, "--prompt-ids", "1,2", "--prompt-ids", "3", "--max-new-tokens", "3")
    lines = r.stdout.splitlines()
    assert lines[0] == "== prompt 0, sequence 0 ==" and lines[2] == "== prompt 1, sequence 0 =="
    assert len(lines) == 4
