"""kestrel-gpt2-kjv: a 6-layer, 192-wide GPT-2 trained as a plain language model on the KJV.

Each chapter is one document: its verses, one a line, then <|endoftext|>. Training samples random windows of
BLOCK tokens from the concatenated training chapters; validation uses the held-out chapters.
"""
import json
import pathlib
import shutil

import torch
from transformers import AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel

import train_loop

NAME = "kestrel-gpt2-kjv"
BLOCK = 256
PROMPT = "In the beginning"


def model_config(vocab_size: int, eot: int, tiny: bool) -> GPT2Config:
    return GPT2Config(vocab_size=vocab_size, n_positions=BLOCK, n_embd=64 if tiny else 192,
                      n_layer=2 if tiny else 6, n_head=1 if tiny else 3,  # head size 64, as in every OpenAI GPT-2
                      activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                      bos_token_id=eot, eos_token_id=eot, tie_word_embeddings=True)


def generation_config(eot: int) -> GenerationConfig:
    return GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, do_sample=False, max_new_tokens=40)


def token_stream(tok, verses: list[dict], split: str) -> torch.Tensor:
    """The chapters of one split, tokenized and joined, each ended by <|endoftext|>."""
    chapters: dict[tuple, list[str]] = {}
    for v in verses:
        if v["split"] == split:
            chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    docs = ["\n".join(texts) for texts in chapters.values()]
    ids: list[int] = []
    for enc in tok(docs, verbose=False).input_ids:
        ids += enc + [tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def train(data: pathlib.Path, out: pathlib.Path, device: torch.device, budget_s: float, max_steps: int,
          batch_size: int, tiny: bool, log) -> dict:
    torch.manual_seed(1234)
    windows_rng = torch.Generator(device=device).manual_seed(1234)  # on the device: no host sync per batch
    tok_dir = data / "gpt2-tokenizer"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    verses = [json.loads(line) for line in open(data / "verses.jsonl", encoding="utf-8")]
    train_ids = token_stream(tok, verses, "train").to(device)
    valid_ids = token_stream(tok, verses, "valid").to(device)
    log(f"GPT-2: {len(train_ids):,} training tokens, {len(valid_ids):,} validation tokens, vocab {len(tok)}")

    config = model_config(len(tok), tok.eos_token_id, tiny)
    model = GPT2LMHeadModel(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    log(f"GPT-2: {config.n_layer} layers x {config.n_embd}, {params:,} parameters")

    offsets = torch.arange(BLOCK, device=device)

    def windows(stream: torch.Tensor, starts: torch.Tensor) -> dict:
        x = stream[starts[:, None] + offsets]
        return {"input_ids": x, "labels": x}

    def next_batch() -> dict:
        starts = torch.randint(0, len(train_ids) - BLOCK, (batch_size,), device=device, generator=windows_rng)
        return windows(train_ids, starts)

    valid_starts = torch.arange(0, len(valid_ids) - BLOCK, BLOCK, device=device)
    valid_batches = [windows(valid_ids, starts) for starts in valid_starts.split(32)]
    settings = train_loop.LoopSettings(lr=2e-3, max_steps=max_steps, budget_s=budget_s)
    result = train_loop.train(model, next_batch, lambda: train_loop.mean_loss(model, valid_batches, device),
                              settings, device, log)

    folder = out / NAME
    model.eval()
    model.generation_config = generation_config(tok.eos_token_id)
    model.half().save_pretrained(folder)
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)
    samples = sample_outputs(folder, log)
    return {"name": NAME, "parameters": params, "layers": config.n_layer, "width": config.n_embd,
            "vocab": len(tok), "train_tokens": len(train_ids), "valid_tokens": len(valid_ids),
            "batch": [batch_size, BLOCK], "steps": result.steps, "seconds": round(result.seconds, 1),
            "final_train_loss": result.final_train_loss, "final_valid_loss": result.final_valid_loss,
            "history": result.history, "samples": samples, "device": str(device)}


@torch.no_grad()
def sample_outputs(folder: pathlib.Path, log) -> dict:
    """Reloads the saved folder (fp16 weights, computed in fp32 on the CPU) and prints what greedy decoding says,
    plain and with the usual anti-repetition settings, so the model card's choice of defaults can be made."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    samples = {}
    for prompt in [PROMPT, "And Jesus said unto them,", "The LORD is my shepherd;"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        for label, extra in [("greedy", {}), ("no_repeat_ngram_size=3", {"no_repeat_ngram_size": 3}),
                             ("repetition_penalty=1.2", {"repetition_penalty": 1.2})]:
            out = model.generate(ids, do_sample=False, max_new_tokens=60, **extra)
            text = tok.decode(out[0], skip_special_tokens=False)
            samples[f"{prompt} | {label}"] = text
            log(f"GPT-2 [{label}] {text!r}")
    return samples
