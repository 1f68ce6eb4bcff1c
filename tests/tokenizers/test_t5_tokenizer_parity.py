"""T5 SentencePiece tokenizer parity with transformers 5.x (what `AutoTokenizer.from_pretrained` gives).

No real T5 spiece.model is available offline, so the session trains a small Unigram model with T5's settings
(pad 0, eos 1, unk 2, no bos, nmt_nfkc normalisation) on varied text, then builds the folders a user could have:
spiece.model only, spiece.model + tokenizer.json written by transformers, tokenizer.json only. Every folder is
compared with transformers on the shared corpus plus T5-specific strings (sentinels, specials, whitespace,
normalisation, unknown characters), for encode, decode and decode(skip_special_tokens=True). Plain tokenizer.json
variants (another tokenizer_class) are compared with the `tokenizers` library directly.
"""
import copy
import json
import pathlib
import random
import shutil
import subprocess
import sys

import pytest

sentencepiece = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import CORPUS, INVALID_UTF8  # noqa: E402

T5_STRINGS = [
    "a <extra_id_0> b", "a<extra_id_0>b", "<extra_id_0>", "x <extra_id_99>  y</s>", "<extra_id_5><extra_id_6>",
    "Hello</s>world<pad>", "<unk>", "<extra_id_100>", "<extra_id_0", "extra_id_0>", "</s></s>", " </s> ",
    "", " ", "   ", "  leading and trailing  ", "tab\tnew\nline\r\nend", "\u00a0nbsp\u3000ideographic\u2003em",
    "\ufb01 \u2460 \uff21\uff22\uff23 \u00bd \u2075 \u3231", "e\u0301 combining a\u0308 o\u0302\u0323",
    "\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0639\u0631\u0628\u0649 \u0646\u0635", "\u0939\u093f\u0928\u094d\u0926\u0940 \u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f",
    "control\x00\x01\x7fchars", "zero\u200bwidth\u200cjoiner\u2060", "\u2581literal\u2581metaspace \u2581", "\ufeffbom",
    "Don't stop . Really ?! It 's , fine", "CAPS lowercase MiXeD 12345 3.14 -7", "tabs\t\tand\u000bvertical\u000cfeed",
    "\u1100\u1161\u11a8 jamo \uac00\ud7a3 hangul", "\u0e01\u0e34\u0e19\u0e02\u0e49\u0e32\u0e27 thai", "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism", "\r\n\r\n", "x\u0085y\u2028z\u2029w",
]

TRAINING_EXTRA = [
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe fa\u00e7ade", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u4e2d\u6587\u6587\u672c\u3002",
    "Emoji \U0001f600\U0001f389 fun", "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03ba\u03b5\u03af\u03bc\u03b5\u03bd\u03b1", "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "The quick brown fox jumps over the lazy dog.", "translate English to German: That is good.",
]


def shared_corpus():
    """The >= 200-string corpus of tests/tokenizers/corpus.py (the GPT-2 tokenizer tests share it)."""
    return list(CORPUS)


def random_texts(n, seed):
    """Random strings mixing ASCII, accents, CJK, emoji, whitespace and combining marks."""
    rng = random.Random(seed)
    pools = ["abcdefghij klmnop QRSTUV 0123 .,;!?'\"", "\u00e9\u00e8\u00fc\u00f1\u00e7\u00df", "\u65e5\u672c\u8a9e\u4e2d\u6587",
             "\U0001f600\U0001f44d\U0001f3fd\u200d", " \t\n\u00a0\u3000", "\u0301\u0308\u0323", "\ufb01\u2460\uff21\u00bd",
             "<>/_\u2581"]
    out = []
    for _ in range(n):
        length = rng.randint(0, 40)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(length)))
    return out


def license_lines():
    lines = []
    for p in sorted(pathlib.Path("/usr/share/common-licenses").glob("*")):
        if p.is_file():
            lines += [line for line in p.read_text(errors="ignore").splitlines() if line.strip()]
    return lines


def train(path, strings, **options):
    text = license_lines() + [s for s in strings if s.strip()] + TRAINING_EXTRA * 5
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(path), model_type="unigram", vocab_size=1000,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.9995, minloglevel=2, **options)
    return path.with_suffix(".model")


def write_config(folder, vocab_size):
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": vocab_size}))


@pytest.fixture(scope="session")
def texts():
    return shared_corpus() + T5_STRINGS + random_texts(100, seed=5)


@pytest.fixture(scope="session")
def t5_folders(tmp_path_factory, texts):
    """{name: folder} of T5 tokenizer folders built from one trained spiece.model."""
    root = tmp_path_factory.mktemp("t5tok")
    model = train(root / "sp", shared_corpus())
    spm_only = root / "spm_only"
    spm_only.mkdir()
    shutil.copy(model, spm_only / "spiece.model")
    write_config(spm_only, 1100)
    reference = transformers.AutoTokenizer.from_pretrained(spm_only)
    saved = root / "saved"
    reference.save_pretrained(saved)
    shutil.copy(model, saved / "spiece.model")
    write_config(saved, len(reference))
    json_only = root / "json_only"
    shutil.copytree(saved, json_only)
    (json_only / "spiece.model").unlink()
    cleanup = root / "cleanup"
    shutil.copytree(json_only, cleanup)
    cfg = json.loads((cleanup / "tokenizer_config.json").read_text())
    cfg["clean_up_tokenization_spaces"] = True
    (cleanup / "tokenizer_config.json").write_text(json.dumps(cfg))
    return {"spm_only": spm_only, "saved": saved, "json_only": json_only, "cleanup": cleanup}


def run_tool(build_dir, folder, request, tmp_path):
    tool = build_dir / "tests" / "tokenizers" / "kestrel_tokenize_corpus"
    if not tool.exists():
        pytest.fail(f"{tool} not built (ninja kestrel_tokenize_corpus)")
    req = tmp_path / "request.json"
    req.write_text(json.dumps(request))
    r = subprocess.run([str(tool), str(folder), str(req), "--model-type", "t5"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def random_id_lists(vocab_size, n, seed):
    rng = random.Random(seed)
    lists = [[rng.randrange(vocab_size) for _ in range(rng.randint(0, 12))] for _ in range(n)]
    # Specials and sentinels at the start, in the middle and at the end; ▁-only pieces first.
    return lists + [[1, 0, 2], [vocab_size - 1, 4, vocab_size - 100], [0, 0], [3, 3, 3]]


def compare(texts, expected, got, what):
    bad = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
    assert not bad, f"{len(bad)} of {len(texts)} differ in {what}; first: " + "; ".join(
        f"{t!r}: transformers {e!r} kestrel {g!r}" for t, e, g in bad[:3])


@pytest.mark.parametrize("name", ["spm_only", "saved", "json_only", "cleanup"])
def test_matches_transformers(name, t5_folders, texts, build_dir, tmp_path):
    folder = t5_folders[name]
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(ref).__name__ == "T5Tokenizer"
    assert len(texts) >= 200
    ids = [ref(t).input_ids for t in texts]
    ids_plain = [ref(t, add_special_tokens=False).input_ids for t in texts]
    decode_lists = ids + random_id_lists(len(ref), 100, seed=11)

    got = run_tool(build_dir, folder, {"encode": texts, "decode": decode_lists}, tmp_path)
    assert got["vocab_size"] == len(ref)
    assert got["eos_id"] == ref.eos_token_id and got["pad_id"] == ref.pad_token_id
    assert got["kind"] == "sentencepiece-unigram"
    compare(texts, ids, got["encode"], "encode")
    compare(decode_lists, [ref.decode(i) for i in decode_lists], got["decode"], "decode")
    compare(decode_lists, [ref.decode(i, skip_special_tokens=True) for i in decode_lists],
            got["decode_skip_special"], "decode(skip_special_tokens=True)")

    plain = run_tool(build_dir, folder, {"encode": texts, "add_special_tokens": False}, tmp_path)
    compare(texts, ids_plain, plain["encode"], "encode(add_special_tokens=False)")


def test_invalid_utf8_reads_as_python_replace(t5_folders, build_dir, tmp_path):
    """Ill-formed UTF-8 is read as bytes.decode("utf-8", errors="replace"), as on the GPT-2 side."""
    folder = t5_folders["json_only"]
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    got = run_tool(build_dir, folder, {"encode": [{"hex": b.hex()} for b in INVALID_UTF8]}, tmp_path)
    texts = [b.decode("utf-8", errors="replace") for b in INVALID_UTF8]
    compare(texts, [ref(t).input_ids for t in texts], got["encode"], "encode of ill-formed UTF-8")


def test_sentinel_numbering_and_unknowns(t5_folders):
    """What the parity test relies on: transformers numbers <extra_id_0> last, and unknown text hits <unk>."""
    ref = transformers.AutoTokenizer.from_pretrained(t5_folders["json_only"])
    assert ref.convert_tokens_to_ids("<extra_id_0>") == len(ref) - 1
    assert ref.convert_tokens_to_ids("<extra_id_99>") == len(ref) - 100
    assert any(2 in ref(t).input_ids for t in T5_STRINGS)


def generic_variant(t5_folders, root, name, edit):
    """A tokenizer.json taken as written (tokenizer_class not T5's), changed by `edit`."""
    folder = root / name
    shutil.copytree(t5_folders["json_only"], folder)
    doc = json.loads((folder / "tokenizer.json").read_text())
    edit(doc)
    (folder / "tokenizer.json").write_text(json.dumps(doc))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def metaspace_first(doc):
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}
    doc["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}


def replace_and_strip(doc):
    doc["normalizer"] = {"type": "Sequence", "normalizers": [
        doc["normalizer"], {"type": "Replace", "pattern": {"String": "  "}, "content": " "},
        {"type": "Strip", "strip_left": True, "strip_right": True}]}
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False}


@pytest.mark.parametrize("name,edit", [("metaspace_first", metaspace_first), ("replace_and_strip", replace_and_strip)])
def test_plain_tokenizer_json_matches_tokenizers(name, edit, t5_folders, texts, build_dir, tmp_path_factory,
                                                 tmp_path):
    folder = generic_variant(t5_folders, tmp_path_factory.mktemp("generic"), name, edit)
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = [ref.encode(t).ids for t in texts]
    decode_lists = ids + random_id_lists(ref.get_vocab_size(), 50, seed=3)
    got = run_tool(build_dir, folder, {"encode": texts, "decode": decode_lists}, tmp_path)
    compare(texts, ids, got["encode"], "encode")
    compare(decode_lists, [ref.decode(i, skip_special_tokens=False) for i in decode_lists], got["decode"], "decode")
    compare(decode_lists, [ref.decode(i) for i in decode_lists], got["decode_skip_special"], "decode(skip)")


def test_byte_fallback_model_matches_tokenizers(tmp_path_factory, texts, build_dir, tmp_path):
    """A Unigram tokenizer.json with byte_fallback: unknown characters become <0xNN> pieces."""
    root = tmp_path_factory.mktemp("bytefallback")
    model = train(root / "sp", shared_corpus(), byte_fallback=True)
    spm_only = root / "spm_only"
    spm_only.mkdir()
    shutil.copy(model, spm_only / "spiece.model")
    write_config(spm_only, 1100)
    transformers.AutoTokenizer.from_pretrained(spm_only).save_pretrained(root / "saved")
    t5 = {"json_only": root / "saved"}

    def byte_fallback(doc):
        doc["model"]["byte_fallback"] = True

    folder = generic_variant(t5, root, "generic", byte_fallback)
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = [ref.encode(t).ids for t in texts]
    assert any(ref.id_to_token(i).startswith("<0x") for row in ids for i in row)
    got = run_tool(build_dir, folder, {"encode": texts, "decode": ids}, tmp_path)
    compare(texts, ids, got["encode"], "encode")
    compare(ids, [ref.decode(i, skip_special_tokens=False) for i in ids], got["decode"], "decode")


def test_errors_name_the_file(t5_folders, build_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spiece.model").write_bytes(b"\x0a\x05hello not a model")
    tool = build_dir / "tests" / "tokenizers" / "kestrel_tokenize_corpus"
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"encode": ["x"]}))
    r = subprocess.run([str(tool), str(bad), str(req), "--model-type", "t5"], capture_output=True, text=True)
    assert r.returncode == 1
    assert str(bad / "spiece.model") in r.stderr and "SentencePiece model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    odd = tmp_path / "odd"
    shutil.copytree(t5_folders["json_only"], odd)
    doc = json.loads((odd / "tokenizer.json").read_text())
    doc["normalizer"] = {"type": "NFKD"}
    (odd / "tokenizer.json").write_text(json.dumps(doc))
    cfg = json.loads((odd / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (odd / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = subprocess.run([str(tool), str(odd), str(req), "--model-type", "t5"], capture_output=True, text=True)
    assert r.returncode == 1
    assert str(odd / "tokenizer.json") in r.stderr and "NFKD" in r.stderr
