"""Step 2 of 2 (runs on the GPU machine): train kestrel-gpt2-kjv and kestrel-t5-kjv, save each with
save_pretrained (fp16 safetensors, HF folder layout, generation_config.json, tokenizer files from prepare.py),
check what each says, and pack everything for the trip back:

  OUT/kestrel-gpt2-kjv.tar, OUT/kestrel-t5-kjv.tar   the model folders
  OUT/metrics.json                                  sizes, steps, time, losses, samples (for the model cards)
  OUT/train.log                                     everything printed

Usage (GPU):  PYTHONUNBUFFERED=1 python3 tools/train_default_models/train.py --data .gpu/kjv --out $OUT
Smoke test on the CPU with tiny models and a few steps:  ... train.py --tiny --max-steps 60 --out /tmp/x
"""
import argparse
import json
import pathlib
import random
import sys
import tarfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_gpt2  # noqa: E402
import train_t5  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path(".gpu/kjv"), help="prepare.py's output")
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--gpt2-budget", type=float, default=140.0, help="seconds of training for GPT-2")
    ap.add_argument("--t5-budget", type=float, default=240.0, help="seconds of training for T5")
    ap.add_argument("--max-steps", type=int, default=12000)
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/kestrel-default-models"),
                    help="where the model folders are written before they are packed")
    ap.add_argument("--only", choices=["gpt2", "t5"], help="train one of the two models")
    ap.add_argument("--t5-optimizer", choices=["adafactor", "adamw"], default="adafactor")
    ap.add_argument("--t5-lr", type=float, default=0.015)
    ap.add_argument("--t5-batch", type=int, default=1024, help="examples a step (T5 is launch-bound: go big)")
    ap.add_argument("--t5-pool", type=int, default=3_000_000, help="span-corrupted examples made up front")
    ap.add_argument("--t5-init", type=pathlib.Path,
                    help="warm start: continue training this saved T5 folder (e.g. assets/models/kestrel-t5-kjv) "
                         "instead of a new model; same tokenizer, data, objective and hyper-parameters")
    ap.add_argument("--end-by", type=float,
                    help="Unix time by which training must end, e.g. $(( $(date +%%s) + 420 )): T5's budget shrinks "
                         "to fit, so that the model is saved and packed inside a fixed wall-clock limit")
    ap.add_argument("--tiny", action="store_true", help="tiny models and batches: a smoke test of the script")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "train.log", "w", encoding="utf-8")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        log(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    import transformers
    log(f"transformers {transformers.__version__}")

    models_dir = args.work
    metrics = {}
    started = time.perf_counter()
    deadline = None if args.end_by is None else time.perf_counter() + (args.end_by - time.time())
    names = []
    if args.only != "t5":
        metrics["gpt2"] = train_gpt2.train(args.data, models_dir, device, args.gpt2_budget, args.max_steps,
                                           4 if args.tiny else 64, args.tiny, log)
        names.append(train_gpt2.NAME)
    if args.only != "gpt2":
        metrics["t5"] = train_t5.train(args.data, models_dir, device, args.t5_budget, args.max_steps,
                                       8 if args.tiny else args.t5_batch, args.tiny, log, args.t5_optimizer,
                                       args.t5_lr, pool_size=2_000 if args.tiny else args.t5_pool,
                                       init=args.t5_init, deadline=deadline)
        names.append(train_t5.NAME)
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for name in names:
        folder = models_dir / name
        size = sum(f.stat().st_size for f in folder.iterdir())
        log(f"{name}: {size / 1e6:.2f} MB in {sorted(f.name for f in folder.iterdir())}")
        with tarfile.open(args.out / f"{name}.tar", "w") as tar:
            tar.add(folder, arcname=name)
    log(f"done in {metrics['total_seconds']} s")


if __name__ == "__main__":
    main()
