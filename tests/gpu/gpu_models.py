"""Random GPT-2 and T5 checkpoints for the GPU tests and benchmark, built with transformers (no Hub access).

GPT-2 weights are drawn with a larger initializer_range than the default so logits are spread out (with 0.02 nearly
every logit ties and greedy argmax would compare noise). T5 keeps transformers' default initialisation: a larger
factor makes the model so ill-conditioned that even Kestrel CPU fp32 and transformers fp32 differ by ~4e-3.
"""
import json
import pathlib

import torch
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration


def small_gpt2(path: pathlib.Path, seed: int = 0, n_inner=None, n_embd: int = 128, n_head: int = 4,
               n_layer: int = 3, initializer_range: float = 0.15) -> pathlib.Path:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=512, n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     initializer_range=initializer_range, bos_token_id=511, eos_token_id=511, n_inner=n_inner)
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    return path


def small_t5(path: pathlib.Path, seed: int = 0, gated: bool = False, ffn_scale: float = 1.0,
             hidden_scale: float = 1.0, d_ff: int = 256, d_model: int = 128, num_heads: int = 4,
             logit_scale: float = 1.0, d_kv: int = 32) -> pathlib.Path:
    """ffn_scale > 1 multiplies every wo weight so the FFN outputs leave the fp16 range (real T5 does this);
    hidden_scale > 1 multiplies wi (gated: wi_1) so the FFN's hidden activations, wo's input, leave it;
    logit_scale multiplies the decoder's final norm weight, so the logits (of standard deviation ~sqrt(d_model)
    with the default N(0, 1) LM head when it is not scaled by d_model^-0.5) by as much."""
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=384, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=2, num_decoder_layers=2,
                   num_heads=num_heads,
                   relative_attention_num_buckets=32, relative_attention_max_distance=64,
                   feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                   tie_word_embeddings=not gated)
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("DenseReluDense.wo.weight"):
                p.mul_(ffn_scale)
            if name.endswith("DenseReluDense.wi_1.weight" if gated else "DenseReluDense.wi.weight"):
                p.mul_(hidden_scale)
            if name == "decoder.final_layer_norm.weight":
                p.mul_(logit_scale)
    model.save_pretrained(path)
    return path


def real_shape_gpt2(path: pathlib.Path, size: str, dtype=torch.float16) -> pathlib.Path:
    """GPT-2 of a real size with random weights (initialised on the GPU: fast), saved in fp16."""
    dims = {"small": (768, 12, 12), "medium": (1024, 24, 16), "large": (1280, 36, 20), "xl": (1600, 48, 25)}[size]
    cfg = GPT2Config(n_embd=dims[0], n_layer=dims[1], n_head=dims[2])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GPT2LMHeadModel(cfg).to(dtype).eval()
    model.save_pretrained(path)
    return path


T5_SHAPES = {  # d_model, d_kv, d_ff, layers, heads (T5 v1.0 checkpoints, relu, vocab 32128)
    "small": (512, 64, 2048, 6, 8), "base": (768, 64, 3072, 12, 12), "large": (1024, 64, 4096, 24, 16),
    "3b": (1024, 128, 16384, 24, 32), "11b": (1024, 128, 65536, 24, 128)}


def real_shape_t5(path: pathlib.Path, size: str, dtype=torch.float16) -> pathlib.Path:
    """T5 of a real size with random weights (initialised on the GPU), saved in fp16."""
    d_model, d_kv, d_ff, layers, heads = T5_SHAPES[size]
    cfg = T5Config(vocab_size=32128, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers,
                   num_decoder_layers=layers, num_heads=heads, feed_forward_proj="relu", decoder_start_token_id=0,
                   eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = T5ForConditionalGeneration(cfg).to(dtype).eval()
    model.save_pretrained(path)
    return path


def write_rows(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text(json.dumps([[int(t) for t in r] for r in rows]))
    return path
