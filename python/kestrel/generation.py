"""generate(): transformers' arguments resolved into one GenerationConfig, then run natively when Kestrel's own
loop implements every setting in it, else by transformers' loop over Kestrel's forward (with a one-line notice).
The native loop follows transformers' semantics: the same tokens come out for greedy and beam search."""
import copy
import functools
import warnings

import torch
from transformers import GenerationConfig

from .inputs import rows_from_batch

# GenerationConfig fields Kestrel's native loop implements.
NATIVE = {"max_new_tokens", "max_length", "min_new_tokens", "do_sample", "num_beams", "num_return_sequences",
          "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "length_penalty",
          "early_stopping", "eos_token_id", "pad_token_id"}
# Fields that only matter when they differ from the model's own (Kestrel reads those from the checkpoint).
# (None: transformers falls back to the model config's, which is what Kestrel read too.)
MODEL_OWN = {"decoder_start_token_id"}
# Fields that do not change what is generated.
IGNORED = {"bos_token_id", "transformers_version", "_from_model_config", "_commit_hash", "use_cache", "cache_implementation",
           "return_dict_in_generate", "output_attentions", "output_hidden_states", "compile_config"}
# generate() arguments besides the GenerationConfig ones that the native loop cannot honour.
LOOP_ARGUMENTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "assistant_model",
                  "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate", "synced_gpus")
# Model inputs generate() accepts besides input_ids.
MODEL_INPUTS = {"attention_mask", "use_cache", "decoder_attention_mask"}


def resolve_config(model, generation_config, kwargs):
    """transformers' own merge: the model's generation config, then the given one, then keyword overrides.
    Returns (config, model kwargs); an unknown keyword is the ValueError transformers raises."""
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    model_kwargs = config.update(**kwargs)
    unused = [k for k in model_kwargs if k not in MODEL_INPUTS]
    if unused:
        raise ValueError(f"The following `model_kwargs` are not used by the model: {unused} (note: typos in the "
                         "generate arguments will also show up in this list)")
    return config, model_kwargs


@functools.cache
def _unset_values():
    """GenerationConfig's own defaults, and what transformers puts in place of an unset field (typical_p 1.0,
    num_beam_groups 1, ...; some pipelines fill them in): set to either, a field changes nothing. The same for
    the whole process, so made once, not at every generate() (read only)."""
    return GenerationConfig().to_dict(), getattr(GenerationConfig, "_get_default_generation_params", dict)()


def non_native_settings(model, config, loop_arguments):
    default, library = _unset_values()
    own = model.generation_config.to_dict()
    found = [name for name, value in loop_arguments.items() if value is not None]
    for key, value in config.to_dict().items():
        if key in NATIVE or key in IGNORED:
            continue
        if key in MODEL_OWN:
            if value is not None and value != own.get(key):
                found.append(key)
        elif value != default.get(key) and (value or default.get(key)):  # None, False and 0 all mean "off"
            if key not in library or value != library[key]:
                found.append(key)
    return found


def native_options(model, config, prompt_width):
    eos = config.eos_token_id
    if isinstance(eos, torch.Tensor):
        eos = eos.tolist()
    if isinstance(eos, int):
        eos = [eos]
    if config.max_new_tokens is not None:
        max_new = config.max_new_tokens
    else:  # transformers counts max_length over the padded prompt (GPT-2) or the decoder start (T5)
        max_new = (config.max_length or 20) - (1 if model.config.is_encoder_decoder else prompt_width)
    # transformers 5 leaves unset fields None ("the library default"); None reaches Kestrel as "not given", and
    # Kestrel's defaults are transformers' (top_k 50, temperature 1, ...).
    early = config.early_stopping
    if early is not None and not isinstance(early, str):
        early = "true" if early else "false"
    options = {
        "max_new_tokens": max_new, "min_new_tokens": config.min_new_tokens, "do_sample": bool(config.do_sample),
        "num_beams": config.num_beams, "num_return_sequences": config.num_return_sequences,
        "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
        "repetition_penalty": config.repetition_penalty, "no_repeat_ngram_size": config.no_repeat_ngram_size,
        "length_penalty": config.length_penalty, "early_stopping": early,
        "eos_token_id": list(eos) if eos is not None else None, "pad_token_id": config.pad_token_id,
    }
    if options["do_sample"]:
        # Drawn from torch's generator, so torch.manual_seed makes sampling reproducible as with transformers.
        options["seed"] = int(torch.randint(0, 2**62, (1,)).item())
    return options


class _StreamerBridge:
    """Feeds transformers' streamer protocol (put(prompt), put(token)..., end()) from the native callback."""

    def __init__(self, streamer):
        self.streamer = streamer

    def __call__(self, sequence, tokens):
        for t in tokens:
            self.streamer.put(torch.tensor([t]))


def native_generate(model, input_ids, attention_mask, config, streamer):
    rows, _ = rows_from_batch(input_ids, attention_mask, model.device)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    options = native_options(model, config, input_ids.shape[1])
    if streamer is not None:
        if (config.num_beams or 1) > 1:
            raise ValueError("`streamer` cannot be used with beam search (yet!). Make sure that `num_beams` is set to 1.")
        if len(rows) * (config.num_return_sequences or 1) > 1:
            raise ValueError("TextStreamer only supports batch size 1")
        start = input_ids if not model.config.is_encoder_decoder else torch.tensor([[model.native.decoder_start_token_id]])
        streamer.put(start.cpu())
    sequences, _scores, pad = model.native.generate(rows, options, _StreamerBridge(streamer) if streamer else None)
    if streamer is not None:
        streamer.end()
    longest = max(len(s) for s in sequences)
    fill = pad if pad >= 0 else 0
    new = torch.full((len(sequences), longest), fill, dtype=torch.long)
    for i, s in enumerate(sequences):
        new[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    if model.config.is_encoder_decoder:
        start = torch.full((len(sequences), 1), model.native.decoder_start_token_id, dtype=torch.long)
        out = torch.cat([start, new], dim=1)
    else:
        prompt = input_ids.detach().to("cpu", torch.long).repeat_interleave(config.num_return_sequences or 1, dim=0)
        out = torch.cat([prompt, new], dim=1)
    return out.to(input_ids.device)


def generate(model, inputs=None, generation_config=None, streamer=None, **kwargs):
    loop_arguments = {k: kwargs.pop(k, None) for k in LOOP_ARGUMENTS}
    input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
    if input_ids is None:
        raise ValueError("generate() needs input_ids (Kestrel does not generate from an empty prompt)")
    config, model_kwargs = resolve_config(model, generation_config, kwargs)
    fallback = non_native_settings(model, config, loop_arguments)
    if fallback:
        warnings.warn(f"kestrel: {', '.join(sorted(fallback))} not run natively; using transformers' generation "
                      "loop over Kestrel's forward", stacklevel=3)
        passed = {k: v for k, v in loop_arguments.items() if v is not None}
        return model._transformers_generate(input_ids, generation_config=config, streamer=streamer,
                                            **passed, **model_kwargs)
    return native_generate(model, input_ids, model_kwargs.get("attention_mask"), config, streamer)
