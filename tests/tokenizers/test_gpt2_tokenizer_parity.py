"""GPT-2 byte-level BPE: Kestrel against transformers.AutoTokenizer, token for token.

Runs on a small ByteLevel BPE trained here with the `tokenizers` library (saved both as tokenizer.json and as
vocab.json + merges.txt), and on the real OpenAI GPT-2 tokenizer in ../shared when it is there.
"""
import json
import pathlib
import random
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from corpus import CORPUS, INVALID_UTF8  # noqa: E402

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ENDOFTEXT = "<|endoftext|>"


def run_corpus_tool(build_dir, model_dir, request, tmp_path, check=True):
    tool = build_dir / "tests" / "tokenizers" / "kestrel_tokenize_corpus"
    if not tool.exists():
        pytest.fail(f"{tool} not built")
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    r = subprocess.run([str(tool), str(model_dir), str(request_file)], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"kestrel_tokenize_corpus exited {r.returncode}: {r.stderr}")
    return json.loads(r.stdout) if r.returncode == 0 else r


@pytest.fixture(scope="session")
def trained_dirs(tmp_path_factory):
    """A ~2k-token ByteLevel BPE trained on the corpus, saved as tokenizer.json and as vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=[ENDOFTEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    root = tmp_path_factory.mktemp("trained_bpe")
    json_dir, files_dir = root / "tokenizer_json", root / "vocab_merges"
    for d in (json_dir, files_dir):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tok.save(str(json_dir / "tokenizer.json"))
    tok.model.save(str(files_dir))
    return {"tokenizer_json": json_dir, "vocab_merges": files_dir}


@pytest.fixture(params=["trained-tokenizer.json", "trained-vocab+merges", "openai-gpt2"])
def tokenizer_dir(request, trained_dirs):
    if request.param == "openai-gpt2":
        from harness import SHARED

        d = SHARED / "tokenizers" / "gpt2"
        if not d.is_dir():
            pytest.skip(f"{d} is absent")
        return d
    return trained_dirs["tokenizer_json" if "json" in request.param else "vocab_merges"]


def hf_tokenizer(model_dir):
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


def first_mismatches(expected, got, inputs, limit=5):
    out = []
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            out.append(f"#{i} input={inputs[i]!r:.120}\n  transformers={e!r:.300}\n  kestrel     ={g!r:.300}")
            if len(out) == limit:
                break
    return "\n".join(out)


def test_encode_matches_transformers(tokenizer_dir, build_dir, tmp_path):
    hf = hf_tokenizer(tokenizer_dir)
    inputs = list(CORPUS) + [raw.decode("utf-8", errors="replace") for raw in INVALID_UTF8]
    request = {"encode": list(CORPUS) + [{"hex": raw.hex()} for raw in INVALID_UTF8]}
    got = run_corpus_tool(build_dir, tokenizer_dir, request, tmp_path)["encode"]
    expected = [hf.encode(s) for s in inputs]
    assert len(got) == len(expected)
    assert got == expected, first_mismatches(expected, got, inputs)


def test_decode_matches_transformers(tokenizer_dir, build_dir, tmp_path):
    hf = hf_tokenizer(tokenizer_dir)
    rng = random.Random(99)
    n = len(hf)
    # Random ids (mostly splitting multi-byte characters), then real encodings cut at random places.
    sequences = [[rng.randrange(n) for _ in range(rng.randint(1, 40))] for _ in range(300)]
    sequences += [[rng.randrange(n)] for _ in range(200)]
    for s in CORPUS[:150]:
        ids = hf.encode(s)
        a, b = sorted(rng.randrange(len(ids) + 1) for _ in range(2))
        sequences.append(ids[a:b] + [hf.convert_tokens_to_ids(ENDOFTEXT)] + ids[b:])
    result = run_corpus_tool(build_dir, tokenizer_dir, {"decode": sequences}, tmp_path)
    expected = [hf.decode(ids) for ids in sequences]
    expected_skip = [hf.decode(ids, skip_special_tokens=True) for ids in sequences]
    assert result["decode"] == expected, first_mismatches(expected, result["decode"], sequences)
    assert result["decode_skip_special"] == expected_skip, first_mismatches(
        expected_skip, result["decode_skip_special"], sequences
    )
    assert result["vocab_size"] == n
    assert result["eos_id"] == hf.eos_token_id
    assert result["pad_id"] == hf.pad_token_id
    assert result["kind"] == "gpt2-bpe"


def test_round_trip_of_every_corpus_string(tokenizer_dir, build_dir, tmp_path):
    # Byte-level BPE loses nothing: decode(encode(s)) == s for every valid string.
    enc = run_corpus_tool(build_dir, tokenizer_dir, {"encode": CORPUS}, tmp_path)["encode"]
    dec = run_corpus_tool(build_dir, tokenizer_dir, {"decode": enc}, tmp_path)["decode"]
    assert dec == list(CORPUS), first_mismatches(list(CORPUS), dec, CORPUS)


@pytest.mark.parametrize(
    "config",
    [
        {"clean_up_tokenization_spaces": True},
        {
            "clean_up_tokenization_spaces": True,
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True,
        },
        {"clean_up_tokenization_spaces": False, "pad_token": ENDOFTEXT},
    ],
    ids=["clean-up-ignored-for-bpe", "clean-up-forced", "pad-token"],
)
def test_tokenizer_config_flags(config, trained_dirs, build_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(trained_dirs["vocab_merges"], d)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **config}))
    hf = hf_tokenizer(d)
    texts = ["Hello , world . Is it ? Yes ! I 'm sure they 're , we 've , it 's don 't ' quoted ' n't"]
    ids = [hf.encode(t) for t in texts]
    result = run_corpus_tool(build_dir, d, {"decode": ids}, tmp_path)
    assert result["decode"] == [hf.decode(i) for i in ids]
    assert result["pad_id"] == hf.pad_token_id


def test_special_token_missing_from_vocab_gets_a_new_id(trained_dirs, build_dir, tmp_path):
    # GPT2Tokenizer adds its bos/eos/unk token when the vocabulary lacks it, with the next free id.
    d = tmp_path / "model"
    shutil.copytree(trained_dirs["vocab_merges"], d)
    vocab = json.loads((d / "vocab.json").read_text())
    del vocab[ENDOFTEXT]
    vocab = {t: i - 1 for t, i in vocab.items()}  # ids must stay dense
    (d / "vocab.json").write_text(json.dumps(vocab))
    hf = hf_tokenizer(d)
    result = run_corpus_tool(build_dir, d, {"encode": ["a<|endoftext|>b"]}, tmp_path)
    assert result["encode"] == [hf.encode("a<|endoftext|>b")]
    assert result["vocab_size"] == len(hf)
    assert result["eos_id"] == hf.eos_token_id


def english_megabyte() -> str:
    """~1 MB of English-like text with a realistic spread of distinct words (not one sentence repeated)."""
    rng = random.Random(5)
    words = " ".join(s for s in CORPUS[:120]).split()
    invented = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 11))) for _ in range(40000)]
    vocab = words * 20 + invented
    out, size = [], 0
    while size < 1_000_000:
        sentence = " ".join(rng.choice(vocab) for _ in range(rng.randint(5, 25))).capitalize() + rng.choice(
            [". ", "? ", "! ", ".\n\n", ", and "]
        )
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def test_encodes_a_megabyte_of_english_well_under_a_second(tokenizer_dir, build_dir, tmp_path):
    text = english_megabyte()
    result = run_corpus_tool(build_dir, tokenizer_dir, {"encode": [text]}, tmp_path)
    assert result["encode_seconds"] < 1.0, f"encoding 1 MB took {result['encode_seconds']:.2f} s"
    assert result["encode"][0] == hf_tokenizer(tokenizer_dir).encode(text)


def test_malformed_files_give_one_line_errors(trained_dirs, build_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(trained_dirs["vocab_merges"], d)
    merges = (d / "merges.txt").read_text().splitlines()
    merges[3] = "Ġ not-in-vocab"
    (d / "merges.txt").write_text("\n".join(merges) + "\n")
    r = run_corpus_tool(build_dir, d, {}, tmp_path, check=False)
    assert r.returncode == 1
    assert "merges.txt line 4" in r.stderr and "not-in-vocab" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1

    (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {}}}))
    r = run_corpus_tool(build_dir, d, {}, tmp_path, check=False)
    assert r.returncode == 1 and "tokenizer.json: model.type is 'WordLevel'" in r.stderr, r.stderr


# The `kestrel tokenize` / `detokenize` commands over a model folder (config.json of model_type gpt2 + tokenizer).


def test_cli_tokenize_and_detokenize(trained_dirs, kestrel_bin):
    from harness import run_kestrel

    d = trained_dirs["tokenizer_json"]
    hf = hf_tokenizer(d)
    text = "Hello world, it's 2024!<|endoftext|> 中文 😀"
    ids = [int(i) for i in run_kestrel("tokenize", d, text).stdout.split()]
    assert ids == hf.encode(text)
    assert json.loads(run_kestrel("tokenize", d, text, "--json").stdout) == {"ids": ids}
    joined = ",".join(map(str, ids))
    assert json.loads(run_kestrel("detokenize", d, joined, "--json").stdout) == {"text": hf.decode(ids)}
    skipped = json.loads(run_kestrel("detokenize", d, joined, "--json", "--skip-special").stdout)
    assert skipped == {"text": hf.decode(ids, skip_special_tokens=True)}


def test_cli_tokenize_invalid_utf8_from_stdin(trained_dirs, kestrel_bin):
    d = trained_dirs["vocab_merges"]
    raw = b"caf\xc3 \xff\xfe ok \xe2\x82"
    r = subprocess.run([str(kestrel_bin), "tokenize", str(d), "--stdin", "--json"], input=raw, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ids"] == hf_tokenizer(d).encode(raw.decode("utf-8", errors="replace"))


def test_cli_reports_a_folder_without_tokenizer(tmp_path, kestrel_bin):
    from harness import run_kestrel

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    r = run_kestrel("tokenize", tmp_path, "hi", check=False)
    assert r.returncode == 1
    assert "no tokenizer files" in r.stderr and str(tmp_path) in r.stderr, r.stderr


def test_added_token_options_match_transformers(trained_dirs, build_dir, tmp_path):
    # lstrip / rstrip / single_word and normalized vs not, as the `tokenizers` AddedVocabulary applies them.
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(trained_dirs["tokenizer_json"] / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
    tok.add_tokens(
        [
            AddedToken("word", single_word=True),
            AddedToken("[x]", lstrip=True, normalized=True),
            AddedToken("[x]yz", normalized=False),
        ]
    )
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tok.save(str(d / "tokenizer.json"))
    hf = hf_tokenizer(d)
    texts = [
        "a <mask> b",
        "a\t\n <mask>\u3000 b",
        "<mask><mask>  <mask>",
        "word words sword word. (word) 中word word中 wordé",
        "  [x] a[x]yz [x]y",
        "the word<mask>word",
    ] + [s.replace("e", " <mask> ").replace("o", "word") for s in CORPUS[:60]]
    result = run_corpus_tool(build_dir, d, {"encode": texts, "decode": [hf.encode(t) for t in texts]}, tmp_path)
    expected = [hf.encode(t) for t in texts]
    assert result["encode"] == expected, first_mismatches(expected, result["encode"], texts)
    assert result["decode_skip_special"] == [hf.decode(i, skip_special_tokens=True) for i in expected]
