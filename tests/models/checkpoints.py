"""Random GPT-2 / T5 checkpoints for parity tests, and transformers' reference log-probabilities.

Weights are drawn with a large spread so logits are far from flat (a parity test on near-uniform logits could
not fail), then saved with save_pretrained in the requested dtype."""
import json
import pathlib

import torch
from safetensors.torch import load_file, save_file


def _perturb(model, seed, scale):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if "ln" in name or "layer_norm" in name:
                p.copy_(1.0 + noise) if name.endswith("weight") else p.copy_(noise)
            else:
                p.copy_(noise)


def make_gpt2(folder: pathlib.Path, seed=0, dtype=torch.float32, bare=False, **cfg):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    base = dict(vocab_size=97, n_positions=64, n_embd=40, n_layer=2, n_head=2)
    base.update(cfg)
    model = GPT2LMHeadModel(GPT2Config(**base)).eval()
    _perturb(model, seed, 0.3)
    if not model.config.tie_word_embeddings:
        with torch.no_grad():
            model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape) * 0.3)
    # bare: save the GPT2Model alone (tensor names without the "transformer." prefix).
    (model.transformer if bare else model).to(dtype).save_pretrained(folder)
    return model.float()


def make_t5(folder: pathlib.Path, seed=0, dtype=torch.float32, untied_head=False, **cfg):
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(seed)
    base = dict(vocab_size=101, d_model=40, d_kv=8, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=1)
    base.update(cfg)
    model = T5ForConditionalGeneration(T5Config(**base)).eval()
    _perturb(model, seed, 0.3)
    model.to(dtype).save_pretrained(folder)
    if untied_head:
        # A T5 v1.1-style checkpoint: its own lm_head.weight, tie_word_embeddings false, no output rescale.
        tensors = load_file(folder / "model.safetensors")
        tensors["lm_head.weight"] = (torch.randn(tensors["shared.weight"].shape) * 0.3).to(dtype)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        config.pop("scale_decoder_outputs", None)
        config["tie_word_embeddings"] = False
        (folder / "config.json").write_text(json.dumps(config))
    return T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def gpt2_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def t5_logprobs(model, source, target):
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source]),
                       decoder_input_ids=torch.tensor([[start] + target[:-1]])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[i, t].item() for i, t in enumerate(target)]
