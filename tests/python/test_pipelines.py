"""transformers.pipeline with a Kestrel model in place of the transformers one: the same text comes out."""
import shutil
import warnings

import pytest
import torch
import transformers

import checkpoints


@pytest.fixture(scope="module")
def gpt2_with_tokenizer(tmp_path_factory, shared_dir):
    """A random GPT-2 of the real vocabulary size next to the real GPT-2 tokenizer (from ../shared)."""
    folder = tmp_path_factory.mktemp("gpt2-tok")
    reference = checkpoints.make_gpt2(folder, seed=3, vocab_size=50257, n_positions=128)
    for f in (shared_dir / "tokenizers" / "gpt2").iterdir():
        shutil.copy(f, folder / f.name)
    return folder, reference


@pytest.fixture(scope="module")
def t5_with_tokenizer(tmp_path_factory):
    """A random T5 with a small SentencePiece tokenizer trained here (no T5 tokenizer can be downloaded)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("t5-tok")
    lines = [l for p in sorted(__import__("pathlib").Path("/usr/share/common-licenses").glob("*")) if p.is_file()
             for l in p.read_text(errors="ignore").splitlines() if l.strip()]
    lines += ["translate English to German: That is good.", "summarize: a long text about nothing."] * 20
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(folder / "sp"), model_type="unigram", vocab_size=300,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    shutil.move(folder / "sp.model", folder / "spiece.model")
    (folder / "sp.vocab").unlink()
    (folder / "config.json").write_text('{"model_type": "t5"}')
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reference = checkpoints.make_t5(folder, seed=4, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(folder)
    return folder, reference, tokenizer


def test_text_generation_pipeline(kestrel, gpt2_with_tokenizer):
    folder, reference = gpt2_with_tokenizer
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    prompts = ["Hello, my dog is", "The quick brown fox"]
    kwargs = dict(max_new_tokens=8, do_sample=False)
    expected = transformers.pipeline("text-generation", model=reference, tokenizer=tokenizer)(prompts, **kwargs)
    ours = transformers.pipeline("text-generation", model=kestrel.from_pretrained(folder), tokenizer=tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pipeline's filled-in defaults change nothing: Kestrel's own loop runs
        assert ours(prompts, **kwargs) == expected
    beams = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    assert ours(prompts[0], **beams) == transformers.pipeline(
        "text-generation", model=reference, tokenizer=tokenizer)(prompts[0], **beams)


def test_text_generation_from_an_engine_file(kestrel, gpt2_with_tokenizer, tmp_path):
    """An engine carries its tokenizer: the unpacked folder serves AutoTokenizer."""
    folder, reference = gpt2_with_tokenizer
    engine = tmp_path / "g.kestrel"
    kestrel.build_engine(str(folder), str(engine))
    model = kestrel.from_pretrained(engine)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.name_or_path)
    kwargs = dict(max_new_tokens=5, do_sample=False)  # the pipeline samples by default: compare greedy output
    expected = transformers.pipeline("text-generation", model=reference, tokenizer=tokenizer)("Once", **kwargs)
    assert transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)("Once", **kwargs) == expected


SEQ2SEQ_TEXTS = ["translate English to German: That is good.", "summarize: the license grants rights"]


def seq2seq_pipeline_or_skip(task, **kwargs):
    try:
        return transformers.pipeline(task, **kwargs)
    except KeyError as e:  # transformers 5 removed the seq2seq pipelines
        pytest.skip(f"transformers {transformers.__version__} has no {task} pipeline: {e}")


@pytest.mark.parametrize("task", ["text2text-generation", "summarization", "translation_en_to_de"])
def test_seq2seq_pipelines(kestrel, t5_with_tokenizer, task):
    folder, reference, tokenizer = t5_with_tokenizer
    kwargs = dict(max_new_tokens=8, num_beams=2)
    expected = seq2seq_pipeline_or_skip(task, model=reference, tokenizer=tokenizer)(SEQ2SEQ_TEXTS, **kwargs)
    got = seq2seq_pipeline_or_skip(task, model=kestrel.from_pretrained(folder), tokenizer=tokenizer)(
        SEQ2SEQ_TEXTS, **kwargs)
    assert got == expected


def test_seq2seq_text_round_trip(kestrel, t5_with_tokenizer):
    """What the seq2seq pipelines did, by hand: tokenize a padded batch, generate, decode."""
    folder, reference, tokenizer = t5_with_tokenizer
    batch = tokenizer(SEQ2SEQ_TEXTS, return_tensors="pt", padding=True)
    model = kestrel.from_pretrained(folder)
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)):
        with torch.no_grad():
            expected = tokenizer.batch_decode(reference.generate(**batch, **kwargs), skip_special_tokens=True)
        got = tokenizer.batch_decode(model.generate(**batch, **kwargs), skip_special_tokens=True)
        assert got == expected
    assert any(expected)
