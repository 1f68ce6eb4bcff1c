"""GPU benchmark: Kestrel --device cuda against transformers on the same GPU, in the same run.

Random weights of real GPT-2 and T5 shapes, fp16, greedy, a 64-token prompt (GPT-2) or encoder input (T5) and 64
new tokens. Every figure is the median of --runs timed runs after 2 warm-up runs, timed with CUDA events (Kestrel:
events on its session's stream, see tests/gpu/gpu_driver.cpp).

Per model, batch 1:
  e2e        prompt + 64 new tokens: Kestrel vs transformers eager `generate` (the ratio is the speedup)
  first      prompt pass up to the first token: Kestrel vs one transformers eager forward of the prompt (T5: the
             encoder and the first decoder step)
             (Kestrel's e2e runs its greedy steps ahead, as generate() does: each step starts, fed on the
             device, before the host reads the ids of the one before; e2e_step_by_step_ms waits for each)
  step       one decode step on its own (the host uploads its token and waits for its id)
  token      Kestrel: a decode step inside the run-ahead loop, (e2e - first) / (new tokens - 1); the floor is
             the bytes of weights a step reads (T5: the decoder and LM head) / the device-to-device copy
             bandwidth measured here (bytes read + written), and achieved GB/s = those bytes / token
  per token  time between consecutive new tokens inside transformers' generate (a streamer that synchronises
             the GPU at each token), eager and (--compile) with a static cache and transformers' automatic
             torch.compile of the decode step; against Kestrel's token
Batches (--batches, for --batch-models): tokens/s of Kestrel and transformers eager generating 64 tokens per row.
Long prompt (--long-prompt N, GPT-2 models): time to the first token of an N-token prompt.
Python (--python): the same e2e and per-token figures for generate() of the kestrel Python package on the engine.

  python bench/gpu_bench.py --build BUILD --out results.json [--models gpt2-small,gpt2-xl,t5-small,t5-3b]
      [--compile gpt2-xl] [--batches 8,32] [--batch-models gpt2-small] [--long-prompt 1024] [--runs 5]
The JSON is rewritten after every model, so a run cut short keeps what it finished.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "gpu"))
import gpu_models  # noqa: E402

NEW_TOKENS = 64
PROMPT_TOKENS = 64


def copy_bandwidth() -> float:
    """Bytes per second of a 2 GiB device-to-device copy, counting bytes read plus bytes written."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = [cuda_ms(lambda: b.copy_(a)) / 1e3 for _ in range(10)]
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times)


def cuda_ms(fn) -> float:
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e)


def timed(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    return [cuda_ms(fn) for _ in range(runs)]


def prompts(batch, length, seed=0):
    return [[(i * 7919 + b * 104729 + seed) % 30000 + 2 for i in range(length)] for b in range(batch)]


def load_hf(kind, path):
    from transformers import GPT2LMHeadModel, T5ForConditionalGeneration
    cls = GPT2LMHeadModel if kind == "gpt2" else T5ForConditionalGeneration
    return cls.from_pretrained(path, torch_dtype=torch.float16, attn_implementation="eager").cuda().eval()


@torch.no_grad()
def hf_generate_ms(model, rows, new_tokens, runs, **extra):
    ids = torch.tensor(rows, device="cuda")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **extra)
    return timed(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), **kw), runs)


class TokenTimes:
    """A generate() streamer that notes when each new token is ready (the GPU synchronised first)."""

    def __init__(self):
        self.t = []

    def put(self, value):
        torch.cuda.synchronize()
        self.t.append(time.perf_counter())

    def end(self):
        pass


@torch.no_grad()
def hf_per_token_ms(model, rows, runs, **extra):
    """Median time between consecutive new tokens of generate() (batch 1), after 2 warm-up runs."""
    ids = torch.tensor(rows, device="cuda")
    kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, **extra)
    gaps = []
    for r in range(runs + 2):
        times = TokenTimes()
        model.generate(ids, attention_mask=torch.ones_like(ids), streamer=times, **kw)
        if r >= 2:
            new = times.t[-(NEW_TOKENS - 1):]
            gaps += [(b - a) * 1e3 for a, b in zip(new, new[1:])]
    return statistics.median(gaps)


@torch.no_grad()
def hf_forward_ms(model, kind, rows, runs):
    ids = torch.tensor(rows, device="cuda")
    if kind == "gpt2":
        return timed(lambda: model(ids, use_cache=True), runs)
    start = torch.zeros((len(rows), 1), dtype=torch.long, device="cuda")
    return timed(lambda: model(input_ids=ids, decoder_input_ids=start, use_cache=True), runs)


def kestrel(driver, path, rows, new_tokens, runs, tmp, tag, max_length=256, env=None):
    prompt_file = gpu_models.write_rows(tmp / f"{tag}.json", rows)
    cmd = [str(driver), "--model", str(path), "--device", "cuda", "--precision", "fp16", "--prompts",
           str(prompt_file), "--new-tokens", str(new_tokens), "--bench-runs", str(runs), "--bench-only",
           "--max-batch", str(len(rows)), "--max-length", str(max_length), "--out", str(tmp / f"k_{tag}")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"kestrel_gpu_driver failed on {tag}: {r.stderr}")
    return json.loads((tmp / f"k_{tag}.json").read_text())


def decode_weight_bytes(model, kind):
    """Bytes of the weights one decode step reads: all of GPT-2; T5's decoder (less the cross-attention K/V
    projections, applied once per request) and the LM head, not the encoder."""
    total = 0
    for name, p in model.named_parameters():  # tied weights appear once
        if kind == "t5" and (name.startswith("encoder.") or ".EncDecAttention.k." in name
                             or ".EncDecAttention.v." in name):
            continue
        total += p.numel() * p.element_size()
    return total


def med(xs):
    return statistics.median(xs)


def bench_model(name, args, driver, bw, tmp):
    kind, size = name.split("-", 1)
    t0 = time.time()
    path = (gpu_models.real_shape_gpt2 if kind == "gpt2" else gpu_models.real_shape_t5)(tmp / name, size)
    rows1 = prompts(1, PROMPT_TOKENS)
    r = {}
    model = load_hf(kind, path)
    weight_bytes = decode_weight_bytes(model, kind)
    hf_e2e = hf_generate_ms(model, rows1, NEW_TOKENS, args.runs)
    hf_first = hf_forward_ms(model, kind, rows1, args.runs)
    r["transformers_eager"] = {"e2e_ms": med(hf_e2e), "first_ms": med(hf_first), "e2e_runs": hf_e2e}
    batch_hf = {}
    if name in args.batch_models:
        for b in args.batches:
            ms = med(hf_generate_ms(model, prompts(b, PROMPT_TOKENS), NEW_TOKENS, max(3, args.runs // 2)))
            batch_hf[b] = {"e2e_ms": ms, "tokens_per_s": b * NEW_TOKENS / ms * 1e3}
    long_hf = None
    if kind == "gpt2" and args.long_prompt:
        long_hf = med(hf_forward_ms(model, kind, prompts(1, args.long_prompt), args.runs))
    r["transformers_eager"]["per_token_ms"] = hf_per_token_ms(model, rows1, 3)
    if name in args.compile:
        t0c = time.time()
        try:  # transformers compiles the decode step itself when the cache is static
            per_token = hf_per_token_ms(model, rows1, 3, cache_implementation="static")
            full = med(hf_generate_ms(model, rows1, NEW_TOKENS, 3, cache_implementation="static"))
            r["transformers_static_compiled"] = {"e2e_ms": full, "per_token_ms": per_token,
                                                 "compile_and_runs_s": time.time() - t0c}
        except Exception as e:  # noqa: BLE001 - recorded, the rest of the benchmark goes on
            r["transformers_static_compiled"] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    del model
    torch.cuda.empty_cache()

    # Kestrel runs from an engine file (`kestrel build`): built once, memory-mapped by every run below.
    t_build = time.time()
    engine = tmp / f"{name}.kestrel"
    subprocess.run([str(args.cli), "build", str(path), "-o", str(engine), "--device", "cuda", "-q"], check=True,
                   timeout=900)
    build_s = time.time() - t_build
    shutil.rmtree(path, ignore_errors=True)
    path = engine
    k = kestrel(driver, path, rows1, NEW_TOKENS, args.runs, tmp, f"{name}_b1")
    kb = k["bench"]
    step, token = med(kb["step_ms"]), med(kb["token_ahead_ms"])
    r["kestrel"] = {"e2e_ms": med(kb["e2e_ahead_ms"]), "first_ms": med(kb["first_ms"]), "token_ms": token,
                    "step_ms": step, "step_ms_p10": statistics.quantiles(kb["step_ms"], n=10)[0],
                    "step_ms_p90": statistics.quantiles(kb["step_ms"], n=10)[-1],
                    "e2e_step_by_step_ms": med(kb["e2e_ms"]), "e2e_runs": kb["e2e_ahead_ms"],
                    "token_runs": kb["token_ahead_ms"], "engine_build_s": build_s, "engine_load_ms": k["load_ms"],
                    "open_ms": k["open_ms"], "precision_notes": k.get("precision_notes", [])}
    if args.python:  # the same engine through the Python package, as a transformers user calls it
        import kestrel as kestrel_package
        pm = kestrel_package.from_pretrained(path, device="cuda")
        py_e2e = hf_generate_ms(pm, rows1, NEW_TOKENS, args.runs)
        r["kestrel_python"] = {"e2e_ms": med(py_e2e), "per_token_ms": hf_per_token_ms(pm, rows1, 3),
                               "e2e_runs": py_e2e}
        r["kestrel_python"]["e2e_over_driver"] = r["kestrel_python"]["e2e_ms"] / r["kestrel"]["e2e_ms"]
        del pm
    if args.ablate_pdl:  # the same run with programmatic dependent launch off
        kn = kestrel(driver, path, rows1, NEW_TOKENS, args.runs, tmp, f"{name}_nopdl", env={"KESTREL_NO_PDL": "1"})
        r["kestrel_without_pdl"] = {"e2e_ms": med(kn["bench"]["e2e_ms"]), "step_ms": med(kn["bench"]["step_ms"])}
    floor = weight_bytes / bw * 1e3
    r["weight_bytes"] = weight_bytes
    r["decode_floor_ms"] = floor
    r["token_over_floor"] = token / floor
    r["step_over_floor"] = step / floor
    r["achieved_GBps"] = weight_bytes / token / 1e6
    r["speedup_e2e_vs_eager"] = r["transformers_eager"]["e2e_ms"] / r["kestrel"]["e2e_ms"]
    r["speedup_first_vs_eager"] = r["transformers_eager"]["first_ms"] / r["kestrel"]["first_ms"]
    r["speedup_per_token_vs_eager"] = r["transformers_eager"]["per_token_ms"] / token
    if "per_token_ms" in r.get("transformers_static_compiled", {}):
        r["speedup_per_token_vs_compiled"] = r["transformers_static_compiled"]["per_token_ms"] / token
    if batch_hf:
        r["batches"] = {}
        for b, hf in batch_hf.items():
            kk = kestrel(driver, path, prompts(b, PROMPT_TOKENS), NEW_TOKENS, max(3, args.runs // 2), tmp,
                         f"{name}_b{b}")
            ms = med(kk["bench"]["e2e_ahead_ms"])
            r["batches"][str(b)] = {"kestrel_tokens_per_s": b * NEW_TOKENS / ms * 1e3,
                                    "transformers_eager_tokens_per_s": hf["tokens_per_s"],
                                    "kestrel_e2e_ms": ms, "transformers_eager_e2e_ms": hf["e2e_ms"]}
    if long_hf is not None:
        kl = kestrel(driver, path, prompts(1, args.long_prompt), 1, args.runs, tmp, f"{name}_long",
                     max_length=args.long_prompt)
        r["long_prompt"] = {"tokens": args.long_prompt, "kestrel_first_ms": med(kl["bench"]["first_ms"]),
                            "transformers_eager_forward_ms": long_hf}
        r["long_prompt"]["speedup"] = long_hf / r["long_prompt"]["kestrel_first_ms"]
    r["wall_s"] = time.time() - t0
    path.unlink(missing_ok=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="gpt2-small,gpt2-xl")
    ap.add_argument("--sizes", help="GPT-2 sizes only (older spelling of --models): small,xl")
    ap.add_argument("--compile", default="")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--batch-models", default="")
    ap.add_argument("--long-prompt", type=int, default=0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", action="store_true",
                    help="also time generate() through the kestrel Python package (importable, with CUDA)")
    ap.add_argument("--ablate-pdl", action="store_true", help="also time Kestrel with KESTREL_NO_PDL=1")
    args = ap.parse_args()
    models = [f"gpt2-{s}" for s in args.sizes.split(",")] if args.sizes else args.models.split(",")
    args.compile = set(filter(None, args.compile.split(",")))
    args.batch_models = set(filter(None, args.batch_models.split(",")))
    args.batches = [int(b) for b in args.batches.split(",") if b]
    driver = pathlib.Path(args.build) / "tests" / "gpu" / "kestrel_gpu_driver"
    args.cli = pathlib.Path(args.build) / "src" / "cli" / "kestrel"
    results = {"gpu": torch.cuda.get_device_name(), "copy_bandwidth_bytes_per_s": copy_bandwidth(),
               "runs": args.runs, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "precision": "fp16",
               "timer": "cuda_events", "command": "python bench/gpu_bench.py " + " ".join(sys.argv[1:]),
               "models": {}}
    out = pathlib.Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            results["models"][name] = m = bench_model(name, args, driver, results["copy_bandwidth_bytes_per_s"],
                                                      pathlib.Path(tmp))
            print(json.dumps({name: {k: v for k, v in m.items() if not isinstance(v, dict)}}), flush=True)
            out.write_text(json.dumps(results, indent=1))
    print_table(results)


def print_table(results):
    print(f"GPU: {results['gpu']}, copy bandwidth {results['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s")
    print("| model | e2e ms (Kestrel / eager) | speedup | first token ms (Kestrel / eager) | token ms (step alone) | "
          "floor ms | token/floor | GB/s | compiled ms/token | vs compiled |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in results["models"].items():
        k, e = m["kestrel"], m["transformers_eager"]
        c = m.get("transformers_static_compiled")
        c = c if c and "per_token_ms" in c else None
        print(f"| {name} | {k['e2e_ms']:.1f} / {e['e2e_ms']:.1f} | {m['speedup_e2e_vs_eager']:.1f}x | "
              f"{k['first_ms']:.2f} / {e['first_ms']:.2f} | {k['token_ms']:.3f} ({k['step_ms']:.3f}) | "
              f"{m['decode_floor_ms']:.3f} | {m['token_over_floor']:.2f} | {m['achieved_GBps']:.0f} | "
              f"{c['per_token_ms']:.2f} | {m['speedup_per_token_vs_compiled']:.1f}x |" if c else
              f"| {name} | {k['e2e_ms']:.1f} / {e['e2e_ms']:.1f} | {m['speedup_e2e_vs_eager']:.1f}x | "
              f"{k['first_ms']:.2f} / {e['first_ms']:.2f} | {k['token_ms']:.3f} ({k['step_ms']:.3f}) | "
              f"{m['decode_floor_ms']:.3f} | {m['token_over_floor']:.2f} | {m['achieved_GBps']:.0f} | - | - |")
    for name, m in results["models"].items():
        if "kestrel_python" in m:
            p = m["kestrel_python"]
            print(f"{name} through the Python package: e2e {p['e2e_ms']:.1f} ms ({p['e2e_over_driver']:.2f}x the "
                  f"driver's), {p['per_token_ms']:.3f} ms/token in generate()")
        if "kestrel_without_pdl" in m:
            print(f"{name} without PDL: step {m['kestrel_without_pdl']['step_ms']:.3f} ms, "
                  f"e2e {m['kestrel_without_pdl']['e2e_ms']:.1f} ms")
        for b, x in m.get("batches", {}).items():
            print(f"{name} batch {b}: Kestrel {x['kestrel_tokens_per_s']:.0f} tokens/s, transformers eager "
                  f"{x['transformers_eager_tokens_per_s']:.0f} tokens/s")
        if "long_prompt" in m:
            lp = m["long_prompt"]
            print(f"{name} {lp['tokens']}-token prompt: first token {lp['kestrel_first_ms']:.2f} ms vs eager forward "
                  f"{lp['transformers_eager_forward_ms']:.2f} ms ({lp['speedup']:.1f}x)")


if __name__ == "__main__":
    main()
