"""kestrel-t5-kjv: a 3+3-layer, 192-wide T5 (ReLU feed-forward and tied embeddings, like the original T5) trained
with T5's span-corruption objective on the KJV.

Each example is 1 to 4 consecutive verses of one chapter (at most MAX_TOKENS SentencePiece tokens), so that short
single-sentence inputs like the demo prompt are as common as long ones; see span_corruption.py for the masking.
Examples are made up front, on every CPU core, into a pool that lives on the GPU: making them one batch at a time
in Python starved the GPU (66 ms a step, most of it waiting).
"""
import json
import multiprocessing
import os
import pathlib
import random
import shutil
import time

import numpy as np
import torch
from transformers import AutoTokenizer, GenerationConfig, T5Config, T5ForConditionalGeneration

import span_corruption
import train_loop

NAME = "kestrel-t5-kjv"
MAX_TOKENS = 112
INPUT_WIDTH = 128  # a corrupted input of MAX_TOKENS tokens is shorter: ~15% become far fewer sentinels, plus </s>
LABEL_WIDTH = 48  # ~17 dropped tokens + one sentinel per span + the last sentinel + </s>
POOL_CHUNK = 20000
DEMO = "In the beginning God <extra_id_0> the heaven and the earth."
DEMO_ANSWER = "created"


def model_config(vocab_size: int, tiny: bool) -> T5Config:
    return T5Config(vocab_size=vocab_size, d_model=64 if tiny else 192, d_kv=64, d_ff=256 if tiny else 768,
                    num_layers=1 if tiny else 3, num_decoder_layers=1 if tiny else 3, num_heads=1 if tiny else 3,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                    feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0)


def generation_config() -> GenerationConfig:
    return GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, do_sample=False,
                            max_new_tokens=20)


def verse_groups(tok, verses: list[dict], split: str) -> list[list[list[int]]]:
    """The verses of each chapter of one split, as SentencePiece ids without </s>."""
    chapters: dict[tuple, list[str]] = {}
    for v in verses:
        if v["split"] == split:
            chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    return [tok(texts, add_special_tokens=False).input_ids for texts in chapters.values()]


def make_example(chapters: list[list[list[int]]], rng: random.Random, sentinel0: int, eos: int):
    chapter = chapters[rng.randrange(len(chapters))]
    first = rng.randrange(len(chapter))
    tokens: list[int] = []
    for verse in chapter[first:first + rng.randint(1, 4)]:
        tokens += verse
    tokens = tokens[:MAX_TOKENS]
    return span_corruption.corrupt(tokens, rng, sentinel0, eos)


_chapters_for_workers: list = []  # set before the worker processes fork, so it is not pickled for every chunk


def _pool_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of the pool, from its own seed: the pool is the same whatever the number of workers."""
    n, seed, sentinel0, eos = args
    chapters = _chapters_for_workers
    rng = random.Random(seed)
    inputs = np.zeros((n, INPUT_WIDTH), dtype=np.int16)  # 0 is <pad>
    labels = np.full((n, LABEL_WIDTH), -100, dtype=np.int16)  # -100: ignored by the loss
    for row in range(n):
        i, l = make_example(chapters, rng, sentinel0, eos)
        inputs[row, :len(i)] = i
        labels[row, :len(l)] = l
    return inputs, labels


def build_pool(chapters, size: int, seed: int, sentinel0: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` span-corrupted examples (rounded up to whole chunks), in random order."""
    chunk = min(size, POOL_CHUNK)
    chunks = [(chunk, seed * 1_000_003 + k, sentinel0, eos) for k in range(-(-size // chunk))]
    _chapters_for_workers[:] = chapters
    with multiprocessing.get_context("fork").Pool(max(1, min(len(chunks), os.cpu_count() or 1))) as pool:
        parts = pool.map(_pool_chunk, chunks)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class PoolBatches:
    """Hands out consecutive batches of the pool (cycling), each cut to its longest input and label, with the
    lengths worked out on the host up front so that no step waits for the GPU."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device):
        self.n_batches = len(inputs) // batch_size
        self.batch_size = batch_size
        inputs, labels = inputs[:self.n_batches * batch_size], labels[:self.n_batches * batch_size]
        shape = (self.n_batches, batch_size, -1)
        self.in_len = ((inputs != 0).sum(-1).reshape(self.n_batches, batch_size)).max(-1)
        self.lab_len = ((labels != -100).sum(-1).reshape(self.n_batches, batch_size)).max(-1)
        self.inputs = torch.from_numpy(inputs.reshape(shape)).to(device)
        self.labels = torch.from_numpy(labels.reshape(shape)).to(device)
        self.next = 0

    def batch(self, b: int) -> dict:
        x = self.inputs[b, :, :self.in_len[b]].long()
        return {"input_ids": x, "attention_mask": (x != 0).long(), "labels": self.labels[b, :, :self.lab_len[b]].long()}

    def __call__(self) -> dict:
        out = self.batch(self.next % self.n_batches)
        self.next += 1
        return out


def train(data: pathlib.Path, out: pathlib.Path, device: torch.device, budget_s: float, max_steps: int,
          batch_size: int, tiny: bool, log, optimizer: str = "adafactor", lr: float = 1e-2,
          pool_size: int = 1_000_000, init: pathlib.Path | None = None, deadline=None) -> dict:
    """init: a saved kestrel-t5-kjv folder to continue from (warm start: its weights, loaded in fp32, with a fresh
    optimizer and learning-rate schedule) instead of a new model; its tokenizer must be prepare.py's.
    deadline: a time.perf_counter() value by which training must end, whatever budget_s says (the pool is made
    first, and its time varies with the machine's cores)."""
    torch.manual_seed(1234)
    tok_dir = data / "t5-tokenizer"
    if init is not None:
        for f in tok_dir.iterdir():
            if (init / f.name).read_bytes() != f.read_bytes():
                raise SystemExit(f"--t5-init {init}: {f.name} differs from {f}; warm start needs the same tokenizer")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    sentinel0 = tok.convert_tokens_to_ids("<extra_id_0>")
    verses = [json.loads(line) for line in open(data / "verses.jsonl", encoding="utf-8")]
    train_chapters = verse_groups(tok, verses, "train")
    valid_chapters = verse_groups(tok, verses, "valid")
    log(f"T5: {sum(len(v) for c in train_chapters for v in c):,} training tokens in {len(train_chapters)} chapters, "
        f"vocab {len(tok)} (<extra_id_0> = {sentinel0})")

    if init is None:
        config = model_config(len(tok), tiny)
        model = T5ForConditionalGeneration(config).to(device)
    else:
        model = T5ForConditionalGeneration.from_pretrained(init, dtype=torch.float32).to(device)
        config = model.config
        config.dtype = torch.float32  # trained in fp32 (+ bf16 autocast); saved as fp16 below, as before
        log(f"T5: warm start from {init}")
    params = sum(p.numel() for p in model.parameters())
    log(f"T5: {config.num_layers}+{config.num_decoder_layers} layers x {config.d_model} (d_ff {config.d_ff}), "
        f"{params:,} parameters")

    # A warm start draws its pool with another seed: the same verses and objective, other spans dropped.
    pool_seed = 1234 if init is None else 1235
    next_batch = PoolBatches(*build_pool(train_chapters, pool_size, pool_seed, sentinel0, tok.eos_token_id),
                             batch_size, device)
    valid = PoolBatches(*build_pool(valid_chapters, 8 * 128, 99, sentinel0, tok.eos_token_id), 128, device)
    valid_batches = [valid.batch(b) for b in range(8)]
    log(f"T5: pool of {next_batch.n_batches * batch_size:,} examples (seed {pool_seed}); {optimizer}, peak lr {lr}")
    initial_valid = train_loop.mean_loss(model, valid_batches, device)
    log(f"T5: held-out loss before training {initial_valid:.4f}")
    if deadline is not None:
        left = deadline - time.perf_counter()
        if left < budget_s:
            log(f"T5: {left:.0f} s left before the deadline: budget {budget_s:.0f} s -> {max(left, 5.0):.0f} s")
            budget_s = max(left, 5.0)
    settings = train_loop.LoopSettings(lr=lr, max_steps=max_steps, budget_s=budget_s, optimizer=optimizer)
    result = train_loop.train(model, next_batch, lambda: train_loop.mean_loss(model, valid_batches, device),
                              settings, device, log)

    folder = out / NAME
    model.eval()
    model.generation_config = generation_config()
    model.half().save_pretrained(folder)
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)
    samples, filled = sample_outputs(folder, log)
    return {"name": NAME, "parameters": params, "layers": [config.num_layers, config.num_decoder_layers],
            "width": config.d_model, "d_ff": config.d_ff, "vocab": len(tok), "batch": batch_size,
            "optimizer": optimizer, "lr": lr, "init": str(init) if init else None, "pool_seed": pool_seed,
            "initial_valid_loss": initial_valid, "budget_s": budget_s, "demo_filled": filled, "demo_ok": filled == DEMO_ANSWER,
            "steps": result.steps, "seconds": round(result.seconds, 1), "final_train_loss": result.final_train_loss,
            "final_valid_loss": result.final_valid_loss, "history": result.history, "samples": samples,
            "device": str(device)}


@torch.no_grad()
def sample_outputs(folder: pathlib.Path, log) -> dict:
    """Reloads the saved folder (fp16 weights, computed in fp32 on the CPU) and fills a few blanks greedily."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    samples = {}
    for prompt in [DEMO, "And God said, Let there be <extra_id_0>: and there was light.",
                   "The LORD is my <extra_id_0>; I shall not want.",
                   "For God so loved the <extra_id_0>, that he gave his only begotten Son."]:
        out = model.generate(tok(prompt, return_tensors="pt").input_ids)
        samples[prompt] = tok.decode(out[0], skip_special_tokens=False)
        log(f"T5 {prompt!r} -> {samples[prompt]!r}")
    filled = tok.decode(model.generate(tok(DEMO, return_tensors="pt").input_ids)[0], skip_special_tokens=True).strip()
    log(f"T5 demo blank filled with {filled!r} ({'OK' if filled == DEMO_ANSWER else 'NOT'} the expected "
        f"{DEMO_ANSWER!r})")
    return samples, filled
