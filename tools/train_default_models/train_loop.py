"""The training loop both models share: AdamW, warm-up + cosine learning rate, bf16 autocast on CUDA, and a step
count fitted to a wall-clock budget.

The budget matters because the GPU machine is lent by the minute: the loop times a few early steps, then
fixes the total number of steps (at most max_steps) so that training ends inside budget_s. The learning-rate
schedule is set from that number, so the run is a normal cosine schedule, not one cut off part way.
"""
import dataclasses
import math
import time
from typing import Callable

import torch

CALIBRATE = (10, 60)  # time steps 10..60: after CUDA's start-up and the allocator's first growth


@dataclasses.dataclass
class LoopSettings:
    lr: float  # peak learning rate (for "adafactor": the step relative to each parameter's RMS)
    max_steps: int
    budget_s: float
    warmup: int = 200
    weight_decay: float = 0.1
    log_every: int = 200
    eval_every: int = 1000
    optimizer: str = "adamw"  # or "adafactor" (T5's own: updates scaled by each parameter's RMS)


@dataclasses.dataclass
class LoopResult:
    steps: int
    seconds: float
    final_train_loss: float  # mean over the last log_every steps
    final_valid_loss: float
    history: list[dict]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on biases, norms or (tied) embeddings, as in GPT-2 and T5 practice."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        embedding = any(key in name for key in ("wte", "wpe", "shared"))
        (decay if p.dim() >= 2 and not embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, s: LoopSettings, device: torch.device) -> torch.optim.Optimizer:
    """AdamW for GPT-2. For T5, Adafactor with parameter scaling, as T5 was trained: T5's initialisation spans
    very different scales (embeddings std 1, query weights std ~0.01), and a plain AdamW step of one size for all
    moves the query weights far too fast and the embeddings far too slowly."""
    if s.optimizer == "adamw":
        return torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.95), eps=1e-8,
                                 fused=device.type == "cuda")
    if s.optimizer == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(model.parameters(), lr=s.lr, scale_parameter=True, relative_step=False, warmup_init=False,
                         clip_threshold=1.0, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {s.optimizer!r}")


def train(model: torch.nn.Module, next_batch: Callable[[], dict], eval_loss: Callable[[], float], s: LoopSettings,
          device: torch.device, log: Callable[[str], None]) -> LoopResult:
    """Trains `model` on batches from `next_batch()` (keyword arguments of model(...), with labels)."""
    opt = make_optimizer(model, s, device)
    total = s.max_steps  # replaced after calibration
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    history: list[dict] = []
    running = torch.zeros((), device=device)
    window = 0
    start = time.perf_counter()
    valid = float("nan")
    step = 0
    while step < total:
        lr_scale = min(1.0, (step + 1) / s.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / total))))
        for group in opt.param_groups:
            group["lr"] = s.lr * lr_scale
        model.train()
        with autocast:
            loss = model(**next_batch()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running += loss.detach()
        window += 1
        step += 1
        if step in CALIBRATE:
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == CALIBRATE[0]:
                calibration_start = time.perf_counter()
            else:
                per_step = (time.perf_counter() - calibration_start) / (CALIBRATE[1] - CALIBRATE[0])
                so_far = time.perf_counter() - start
                total = max(step + 1, min(s.max_steps, step + int((s.budget_s - so_far) / per_step)))
                log(f"  {per_step * 1000:.1f} ms/step: training for {total} steps")
        if step % s.log_every == 0 or step == total:
            train_loss = running.item() / window
            running.zero_()
            window = 0
            if step % s.eval_every == 0 or step == total:
                valid = eval_loss()
            elapsed = time.perf_counter() - start
            history.append({"step": step, "train_loss": train_loss, "valid_loss": valid, "seconds": elapsed})
            log(f"  step {step:6d}/{total}  train {train_loss:.4f}  valid {valid:.4f}  lr {s.lr * lr_scale:.2e}  "
                f"{elapsed:6.1f}s")
    return LoopResult(step, time.perf_counter() - start, history[-1]["train_loss"], valid, history)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: list[dict], device: torch.device) -> float:
    """Token-weighted mean loss of `model` over fixed batches (dropout off)."""
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total, count = 0.0, 0
    for batch in batches:
        with autocast:
            loss = model(**batch).loss
        n = int((batch["labels"] != -100).sum())
        total += loss.item() * n
        count += n
    return total / max(count, 1)
