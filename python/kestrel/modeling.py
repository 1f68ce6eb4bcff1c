"""The drop-in classes: transformers PreTrainedModels whose forward and generate run in Kestrel's engine.

forward(input_ids, attention_mask, ...) returns transformers' output classes with `.logits` ([batch, length,
vocab], float32, on the caller's device) and, with use_cache, a `KestrelCache`: the native session that holds
every row's KV cache, so the next forward takes only the new tokens, as with transformers' own caches.
"""
import dataclasses
import json
import os
import pathlib

import torch
from torch import nn
from transformers import AutoConfig, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput

from . import _kestrel, generation
from .inputs import check_ids, rows_from_batch, scatter_rows

# transformers 5.24 renamed model outputs' `past_key_values` to `cache` (the old name stays readable there);
# Kestrel's outputs fill the field this transformers has.
_CACHE_FIELD = ("cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
                else "past_key_values")

ENGINE_MAGIC = b"KESTRELE"


class KestrelCache:
    """A native session standing in for transformers' KV cache: `seen` decoder tokens per row are cached."""

    def __init__(self, session, seen):
        self.session = session
        self.seen = seen
        self._is_user_defined = False

    def get_seq_length(self, layer_idx=0):
        return self.seen

    def reorder_cache(self, beam_idx):
        self.session.reorder(beam_idx.tolist())


def _is_engine_file(path):
    try:
        with open(path, "rb") as f:
            return f.read(len(ENGINE_MAGIC)) == ENGINE_MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def _local_path(model):
    if os.path.exists(model):
        return pathlib.Path(model)
    from huggingface_hub import snapshot_download  # a Hub id, as transformers resolves it (HF cache first)
    return pathlib.Path(snapshot_download(str(model)))


def _kestrel_device(device):
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device}: Kestrel runs on cpu or cuda")
    return device


def from_pretrained(model, device=None, precision=None, cache=True, threads=0, max_length=0, max_batch=0,
                    deterministic=False):
    """Loads MODEL (checkpoint folder, Hub id or engine file) into Kestrel.

    device: "cpu" or "cuda" (default: the engine's target, else cpu). precision: cuda only ("fp16", "bf16",
    "fp32"). cache: keep the engine built from a checkpoint in Kestrel's cache so the next load maps it at once.
    max_length, max_batch: the tokens a row and the rows (prompts × beams) the session plans for (default: the
    engine's, else on cuda min(positions, 1024) and 8); a call with more rows reopens it larger. A GPU session
    planned for what the calls need runs its decode steps a few percent faster (e.g. max_batch=1).
    deterministic: cuda only, identical results run to run (no kernels that add partial sums in arbitrary
    order; a few percent slower on large models). The CPU engine always is.
    """
    path = _local_path(str(model))
    is_engine = path.is_file() and _is_engine_file(path)
    # Config and tokenizer files: the folder itself, or those unpacked from the engine.
    folder = pathlib.Path(_kestrel.unpack_engine(str(path))) if is_engine else path
    engine_device = None
    if is_engine:
        engine_device = json.loads(_kestrel.engine_metadata(str(path)))["build"]["device"]
    target = _kestrel_device(device if device is not None else engine_device or "cpu")
    native = _kestrel.Model.load(str(path), device=target.type, precision=precision or "", cache=cache,
                                 threads=threads, max_length=max_length, max_batch=max_batch,
                                 deterministic=deterministic)
    config = AutoConfig.from_pretrained(folder)
    if (folder / "generation_config.json").exists():
        generation_config = GenerationConfig.from_pretrained(folder)
    else:
        generation_config = GenerationConfig.from_model_config(config)
    cls = KestrelForSeq2SeqLM if config.is_encoder_decoder else KestrelForCausalLM
    return cls(config, native, target, generation_config, folder)


class _KestrelPreTrainedModel(PreTrainedModel, GenerationMixin):
    """What both drop-ins share: no torch parameters, a device of Kestrel's choosing, Kestrel's generate."""

    base_model_prefix = "kestrel"
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config, native, device, generation_config, folder):
        super().__init__(config)
        self.native = native
        self._kestrel_device = device
        self.generation_config = generation_config
        self.name_or_path = str(folder)
        self.config.name_or_path = str(folder)

    @classmethod
    def from_pretrained(cls, model, *args, **kwargs):  # noqa: D102 - same as kestrel.from_pretrained
        return from_pretrained(model, *args, **kwargs)

    @property
    def device(self):
        return self._kestrel_device

    @property
    def dtype(self):
        return torch.float32

    def can_generate(self):
        return True

    def _init_weights(self, module):
        pass

    def to(self, *args, **kwargs):  # a Kestrel model stays where it was loaded: pass device= to from_pretrained
        return self

    def generate(self, inputs=None, generation_config=None, streamer=None, **kwargs):
        """transformers' generate(): same arguments, same output tensor. Runs natively (GIL released) unless a
        setting needs transformers' own loop, which then runs over Kestrel's forward (with a notice)."""
        with torch.no_grad():
            return generation.generate(self, inputs, generation_config, streamer, **kwargs)

    def _transformers_generate(self, *args, **kwargs):
        return GenerationMixin.generate(self, *args, **kwargs)

    def _logits_tensor(self, array):
        return torch.from_numpy(array).to(self._kestrel_device)  # zero-copy on cpu

    @staticmethod
    def _cache_argument(cache, past_key_values):
        cache = cache if cache is not None else past_key_values
        if cache is None or isinstance(cache, KestrelCache):
            return cache
        if hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0:
            return None  # an empty transformers cache made by generate: Kestrel brings its own
        raise ValueError("Kestrel models continue only from the KestrelCache their own forward returned")


class KestrelForCausalLM(_KestrelPreTrainedModel):
    """GPT-2 in Kestrel, usable where a transformers GPT2LMHeadModel is expected."""

    def forward(self, input_ids=None, attention_mask=None, cache=None, past_key_values=None, use_cache=None,
                return_dict=True, **kwargs):
        cache = self._cache_argument(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        input_ids = check_ids("input_ids", input_ids, self._kestrel_device)
        batch, width = input_ids.shape
        if cache is not None:  # only the new tokens, appended to every row
            flat = self._logits_tensor(cache.session.step(input_ids.cpu().tolist(), all_positions=True))
            cache.seen += width
            logits = flat.reshape(batch, width, -1)
        else:
            rows, mask = rows_from_batch(input_ids, attention_mask, self._kestrel_device)
            session = self.native.open_session(len(rows))
            flat = self._logits_tensor(session.start(rows, all_positions=True))
            logits = scatter_rows(flat, rows, mask, batch, width)
            cache = KestrelCache(session, width) if use_cache else None
        return CausalLMOutputWithPast(logits=logits, **{_CACHE_FIELD: cache if use_cache else None})

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      **kwargs):
        cache = self._cache_argument(cache, past_key_values)
        if cache is not None:
            input_ids = input_ids[:, cache.seen:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": True}


class _TokenEncoder(nn.Module):
    """transformers' generate runs `get_encoder()` first; Kestrel runs the encoder inside its session, so the
    "encoder output" carried through generate is the token ids themselves (expanded for beams like any other)."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=input_ids)


class KestrelForSeq2SeqLM(_KestrelPreTrainedModel):
    """T5 in Kestrel, usable where a transformers T5ForConditionalGeneration is expected."""

    def __init__(self, *args):
        super().__init__(*args)
        self.token_encoder = _TokenEncoder()

    def get_encoder(self):
        return self.token_encoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, cache=None, past_key_values=None, use_cache=None, labels=None,
                return_dict=True, **kwargs):
        cache = self._cache_argument(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("KestrelForSeq2SeqLM needs decoder_input_ids (or labels)")
            decoder_input_ids = self._shift_right(labels)
        decoder_input_ids = check_ids("decoder_input_ids", decoder_input_ids, self._kestrel_device)
        batch, width = decoder_input_ids.shape
        if cache is not None:
            flat = self._logits_tensor(cache.session.step(decoder_input_ids.cpu().tolist(), all_positions=True))
            cache.seen += width
            logits = flat.reshape(batch, width, -1)
        else:
            if encoder_outputs is not None:
                input_ids = encoder_outputs[0]
            if input_ids is None:
                raise ValueError("KestrelForSeq2SeqLM needs input_ids (the encoder input)")
            rows, _ = rows_from_batch(input_ids, attention_mask, self._kestrel_device)
            decoder_rows, decoder_mask = rows_from_batch(decoder_input_ids, decoder_attention_mask,
                                                         self._kestrel_device)
            session = self.native.open_session(len(rows))
            flat = self._logits_tensor(session.start(rows, decoder_rows, all_positions=True))
            logits = scatter_rows(flat, decoder_rows, decoder_mask, batch, width)
            cache = KestrelCache(session, width) if use_cache else None
        return Seq2SeqLMOutput(logits=logits, **{_CACHE_FIELD: cache if use_cache else None})

    def _shift_right(self, labels):
        start = self.native.decoder_start_token_id
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, pad)

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      encoder_outputs=None, **kwargs):
        cache = self._cache_argument(cache, past_key_values)
        if cache is not None:
            input_ids = input_ids[:, cache.seen:]
        return {"decoder_input_ids": input_ids, "attention_mask": attention_mask,
                "encoder_outputs": encoder_outputs, "cache": cache, "use_cache": True}
