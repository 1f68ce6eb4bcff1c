#!/usr/bin/env python3
"""CPU benchmark: Kestrel vs transformers (torch CPU) at batch 1, same thread count.

For GPT-2 small (12 x 768) and T5-small shapes with random weights it times
  - prompt processing: one forward over the prompt (T5: encoder + first decoder step),
  - per-token decode: greedy steps with the KV cache (Kestrel: Session::step via `kestrel bench-step`;
    transformers: model(..., past_key_values=...) one token at a time),
over warmed runs (the first run of each side is discarded), and writes median / p10 / p90 to
bench/results/cpu-<date>.json together with the command line.

    .venv/bin/python bench/cpu_bench.py --build-dir build-engine --threads 2
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def stats(values):
    v = sorted(values)
    q = lambda p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
    return {"median_ms": statistics.median(v), "p10_ms": q(0.1), "p90_ms": q(0.9), "n": len(v)}


def make_models(folder: pathlib.Path):
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config()).eval()  # 12 layers, 768 wide, 50257 vocab
    gpt2.save_pretrained(folder / "gpt2-small")
    t5 = T5ForConditionalGeneration(T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                                             vocab_size=32128, decoder_start_token_id=0)).eval()
    t5.save_pretrained(folder / "t5-small")
    return {"gpt2-small": gpt2, "t5-small": t5}


def bench_kestrel(kestrel, folder, prompt, new_tokens, repeats, threads, encoder_decoder):
    flag = "--source-ids" if encoder_decoder else "--ids"
    cmd = [str(kestrel), "bench-step", str(folder), flag, ",".join(map(str, prompt)), "--new-tokens",
           str(new_tokens), "--repeats", str(repeats + 1), "--threads", str(threads)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    runs = out["runs"][1:]  # the first run warms caches and thread pools
    return {"prefill": stats([r["prefill_ms"] for r in runs]),
            "decode_per_token": stats([s for r in runs for s in r["step_ms"]])}


@torch.no_grad()
def bench_torch(model, prompt, new_tokens, repeats, encoder_decoder):
    prefill, steps = [], []
    ids = torch.tensor([prompt])
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        if encoder_decoder:
            enc = model.get_encoder()(input_ids=ids)
            out = model(encoder_outputs=enc, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]]),
                        use_cache=True)
        else:
            out = model(ids, use_cache=True)
        t1 = time.perf_counter()
        past, run_steps = out.past_key_values, []
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens):
            t = time.perf_counter()
            if encoder_decoder:
                out = model(encoder_outputs=enc, decoder_input_ids=nxt, past_key_values=past, use_cache=True)
            else:
                out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            run_steps.append((time.perf_counter() - t) * 1e3)
        if r > 0:  # discard the warm-up run, as for Kestrel
            prefill.append((t1 - t0) * 1e3)
            steps += run_steps
    return {"prefill": stats(prefill), "decode_per_token": stats(steps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("KESTREL_BUILD_DIR", str(ROOT / "build")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/cpu-<date>.json)")
    args = ap.parse_args()
    kestrel = pathlib.Path(args.build_dir) / "src" / "cli" / "kestrel"
    if not kestrel.exists():
        sys.exit(f"{kestrel} is not built")
    torch.set_num_threads(args.threads)
    prompt = [(i * 7919) % 32000 + 10 for i in range(args.prompt_tokens)]

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(pathlib.Path(tmp))
        for name, model in models.items():
            ed = name.startswith("t5")
            k = bench_kestrel(kestrel, pathlib.Path(tmp) / name, prompt, args.new_tokens, args.repeats, args.threads, ed)
            t = bench_torch(model, prompt, args.new_tokens, args.repeats, ed)
            results[name] = {
                "kestrel": k, "transformers": t,
                "decode_speedup": t["decode_per_token"]["median_ms"] / k["decode_per_token"]["median_ms"],
                "prefill_speedup": t["prefill"]["median_ms"] / k["prefill"]["median_ms"],
            }
            print(f"{name}: decode/token kestrel {k['decode_per_token']['median_ms']:.2f} ms, transformers "
                  f"{t['decode_per_token']['median_ms']:.2f} ms (x{results[name]['decode_speedup']:.2f}); prefill "
                  f"{args.prompt_tokens} tokens kestrel {k['prefill']['median_ms']:.1f} ms, transformers "
                  f"{t['prefill']['median_ms']:.1f} ms (x{results[name]['prefill_speedup']:.2f})", flush=True)

    import transformers
    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                    "note": "shared development machine; other processes may have run during the benchmark"},
        "threads": args.threads, "batch": 1, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "torch": torch.__version__, "transformers": transformers.__version__,
        "results": results,
    }
    out = pathlib.Path(args.out) if args.out else ROOT / "bench" / "results" / f"cpu-{datetime.date.today()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
