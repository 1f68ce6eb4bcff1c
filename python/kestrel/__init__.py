"""Kestrel: fast inference for Hugging Face GPT-2 and T5 checkpoints, as a drop-in for transformers models.

    import kestrel
    model = kestrel.from_pretrained("path/to/gpt2")        # a checkpoint folder, Hub id or FILE.kestrel
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)   # same call, same output

`from_pretrained` returns a `KestrelForCausalLM` (GPT-2) or `KestrelForSeq2SeqLM` (T5): transformers
`PreTrainedModel`s whose forward and generate run in Kestrel's native engine, usable with `transformers.pipeline`.
"""
from ._kestrel import KestrelError, build_engine, engine_cache_path, kestrel_cache_dir, unpack_engine
from .modeling import KestrelForCausalLM, KestrelForSeq2SeqLM, from_pretrained

__all__ = ["from_pretrained", "build_engine", "engine_cache_path", "kestrel_cache_dir", "unpack_engine",
           "KestrelError", "KestrelForCausalLM", "KestrelForSeq2SeqLM"]
__version__ = "0.1.0"
