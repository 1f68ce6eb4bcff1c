"""Checking the tensors a caller hands Kestrel and turning padded batches into the ragged rows it runs."""
import torch


def check_ids(name, tensor, model_device):
    """input_ids-like tensors: integer, 2-D (or 1-D, as one row), on the device the model runs on."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tensor.dtype}")
    if tensor.device.type != model_device.type:
        raise ValueError(f"{name} is on {tensor.device} but the Kestrel model runs on {model_device}; "
                         f"move it with {name}.to('{model_device.type}')")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be [batch, length], got shape {tuple(tensor.shape)}")
    return tensor


def rows_from_batch(input_ids, attention_mask, model_device):
    """The real tokens of each row (positions where attention_mask is 1), whichever side the padding is on."""
    input_ids = check_ids("input_ids", input_ids, model_device)
    ids = input_ids.detach().to("cpu", torch.int64)
    if attention_mask is None:
        return ids.tolist(), None
    attention_mask = check_ids("attention_mask", attention_mask, model_device)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                         f"{tuple(input_ids.shape)}")
    mask = attention_mask.detach().to("cpu").bool()
    rows = [ids[b][mask[b]].tolist() for b in range(ids.shape[0])]
    for b, row in enumerate(rows):
        if not row:
            raise ValueError(f"row {b} of attention_mask masks every token; each row needs at least one")
    return rows, mask


def scatter_rows(flat, rows, mask, batch, width):
    """Logits of every fed position, row after row ([sum of lengths, vocab]) -> [batch, width, vocab] with each
    row's values at its unmasked positions (masked positions hold zeros)."""
    vocab = flat.shape[1]
    if mask is None:
        return flat.reshape(batch, width, vocab)
    out = flat.new_zeros((batch, width, vocab))
    at = 0
    for b, row in enumerate(rows):
        out[b, mask[b]] = flat[at:at + len(row)]
        at += len(row)
    return out
