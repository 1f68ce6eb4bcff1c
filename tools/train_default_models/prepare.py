"""Step 1 of 2 (runs on the CPU): extract the KJV text and train both tokenizers.

Writes, under OUT (default .gpu/kjv, an ignored folder that the GPU run carries):
  verses.jsonl        one verse a line: book, chapter, verse, text, split ("train" or "valid")
  gpt2-tokenizer/     byte-level BPE in GPT-2's own format: vocab.json + merges.txt (+ tokenizer.json and
                      tokenizer_config.json written by transformers from those two, as for OpenAI's GPT-2)
  t5-tokenizer/       SentencePiece Unigram spiece.model with T5's ids (pad 0, eos 1, unk 2) and the 100
                      <extra_id_N> sentinels on top (+ tokenizer.json and tokenizer_config.json from transformers)

Usage: .venv/bin/python tools/train_default_models/prepare.py [--out .gpu/kjv]
"""
import argparse
import json
import pathlib
import sys

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Tokenizer, T5Tokenizer

import kjv_text

GPT2_VOCAB = 6000  # 5,999 learned tokens (256 bytes + merges) + <|endoftext|> last, as in OpenAI's GPT-2
T5_SPM_VOCAB = 6000  # pad, eos, unk + 5,997 pieces; the 100 sentinels come on top: 6,100 ids in all
T5_EXTRA_IDS = 100
EOT = "<|endoftext|>"
VALID_EVERY = 50  # every 50th chapter (never Genesis 1, which the demo prompt needs) is held out for validation


def assign_splits(verses: list[kjv_text.Verse]) -> list[str]:
    chapters = list(dict.fromkeys((v.book, v.chapter) for v in verses))
    held_out = {c for i, c in enumerate(chapters) if i % VALID_EVERY == VALID_EVERY - 1}
    assert ("Genesis", 1) not in held_out
    return ["valid" if (v.book, v.chapter) in held_out else "train" for v in verses]


def train_gpt2_tokenizer(texts: list[str], out: pathlib.Path) -> None:
    """Byte-level BPE with GPT-2's pre-tokenizer regex, no prefix space, <|endoftext|> as the last id."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=GPT2_VOCAB - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([EOT])
    assert tok.get_vocab_size() == GPT2_VOCAB and tok.token_to_id(EOT) == GPT2_VOCAB - 1
    out.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out))  # merges.txt (with GPT-2's "#version: 0.2" header) and a vocab.json without EOT
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    (out / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False), encoding="utf-8")
    # Load from vocab.json + merges.txt alone, exactly as OpenAI's gpt2 folder loads, and let transformers add
    # its tokenizer.json + tokenizer_config.json.
    GPT2Tokenizer.from_pretrained(str(out), model_max_length=256).save_pretrained(str(out))
    check_same_ids(tok, AutoTokenizer.from_pretrained(str(out)), texts, add_eos=False)


def train_t5_tokenizer(texts: list[str], out: pathlib.Path) -> None:
    """SentencePiece Unigram with T5's special ids; transformers adds <extra_id_0..99> as ids 6099..6000."""
    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(out / "spiece"), vocab_size=T5_SPM_VOCAB,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, normalization_rule_name="nmt_nfkc", num_threads=2,
        minloglevel=2)
    (out / "spiece.vocab").unlink()
    T5Tokenizer.from_pretrained(str(out), extra_ids=T5_EXTRA_IDS, model_max_length=512).save_pretrained(str(out))
    hf = AutoTokenizer.from_pretrained(str(out))
    assert len(hf) == T5_SPM_VOCAB + T5_EXTRA_IDS
    assert hf.convert_tokens_to_ids("<extra_id_0>") == T5_SPM_VOCAB + T5_EXTRA_IDS - 1
    check_same_ids(spm.SentencePieceProcessor(model_file=str(out / "spiece.model")), hf, texts, add_eos=True)


def check_same_ids(trained, hf, texts: list[str], add_eos: bool) -> None:
    """The files transformers wrote must tokenize the corpus exactly as the trained tokenizer does."""
    for text in texts[::97]:
        ids = trained.encode(text)
        ids = list(ids.ids if hasattr(ids, "ids") else ids) + ([hf.eos_token_id] if add_eos else [])
        if ids != hf(text).input_ids:
            sys.exit(f"tokenizer files disagree with the trained tokenizer on {text!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path(".gpu/kjv"))
    args = ap.parse_args()
    verses = kjv_text.read_kjv()
    splits = assign_splits(verses)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "verses.jsonl", "w", encoding="utf-8") as f:
        for v, split in zip(verses, splits):
            f.write(json.dumps({"book": v.book, "chapter": v.chapter, "verse": v.verse, "text": v.text,
                                "split": split}) + "\n")
    train_texts = [v.text for v, s in zip(verses, splits) if s == "train"]
    train_gpt2_tokenizer(train_texts, args.out / "gpt2-tokenizer")
    train_t5_tokenizer(train_texts, args.out / "t5-tokenizer")
    print(f"{len(verses)} verses ({splits.count('valid')} held out) and both tokenizers written to {args.out}")


if __name__ == "__main__":
    main()
