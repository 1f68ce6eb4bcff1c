"""GPU benchmark: Kestrel --device cuda against transformers eager, same GPU, same run.

Batch 1, a 64-token prompt, 64 new greedy tokens, fp16, random weights of real GPT-2 shapes. Kestrel times come
from kestrel_gpu_driver (host wall clock around calls that synchronize the GPU); transformers is timed with CUDA
events around model.generate. Both: the median of >= 5 runs after 2 warm-up runs. The decode step is compared with
weight bytes / the device-to-device copy bandwidth measured here (bytes read + written).

  python bench/gpu_bench.py --build BUILD_DIR --out results.json [--sizes small,xl] [--runs 5]
"""
import argparse
import json
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


def copy_bandwidth() -> float:
    """Bytes per second of a 2 GiB device-to-device copy, counting bytes read plus bytes written."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n / statistics.median(times)


@torch.no_grad()
def transformers_eager(path, prompt, new_tokens, runs):
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float16, attn_implementation="eager").cuda().eval()
    ids = torch.tensor([prompt], device="cuda")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    for _ in range(2):
        model.generate(ids, **kw)
    times = []
    for _ in range(runs):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        model.generate(ids, **kw)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return times, weight_bytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="small,xl")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    driver = pathlib.Path(args.build) / "tests" / "gpu" / "kestrel_gpu_driver"
    bw = copy_bandwidth()
    results = {"gpu": torch.cuda.get_device_name(), "copy_bandwidth_bytes_per_s": bw, "runs": args.runs,
               "prompt_tokens": 64, "new_tokens": 64, "batch": 1, "precision": "fp16", "models": {}}
    prompt = [(i * 7919) % 50000 for i in range(64)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        gpu_models.write_rows(tmp / "prompt.json", [prompt])
        for size in args.sizes.split(","):
            path = gpu_models.real_shape_gpt2(tmp / size, size)
            torch.cuda.empty_cache()
            hf_times, weight_bytes = transformers_eager(path, prompt, 64, args.runs)
            t0 = time.time()
            r = subprocess.run([str(driver), "--model", str(path), "--device", "cuda", "--precision", "fp16",
                                "--prompts", str(tmp / "prompt.json"), "--new-tokens", "64", "--bench-runs",
                                str(args.runs), "--max-batch", "1", "--max-length", "256", "--out",
                                str(tmp / f"k_{size}")], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise SystemExit(f"kestrel_gpu_driver failed on {size}: {r.stderr}")
            k = json.loads((tmp / f"k_{size}.json").read_text())
            e2e = statistics.median(k["bench"]["e2e_ms"])
            step = statistics.median(k["bench"]["step_ms"])
            floor_ms = weight_bytes / bw * 1e3
            results["models"][f"gpt2-{size}"] = {
                "weight_bytes": weight_bytes,
                "kestrel_e2e_ms_median": e2e, "kestrel_e2e_ms": k["bench"]["e2e_ms"],
                "kestrel_decode_step_ms_median": step,
                "transformers_eager_e2e_ms_median": statistics.median(hf_times), "transformers_eager_e2e_ms": hf_times,
                "speedup_vs_transformers_eager": statistics.median(hf_times) / e2e,
                "decode_floor_ms_weight_bytes_over_copy_bw": floor_ms,
                "decode_step_over_floor": step / floor_ms,
                "kestrel_load_ms": k["load_ms"], "kestrel_open_ms": k["open_ms"], "wall_s": time.time() - t0,
            }
            print(json.dumps({size: results["models"][f"gpt2-{size}"]}), flush=True)
            shutil.rmtree(path)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1))
    print("| model | kestrel e2e ms | transformers e2e ms | speedup | decode step ms | floor ms | step/floor |")
    for name, m in results["models"].items():
        print(f"| {name} | {m['kestrel_e2e_ms_median']:.2f} | {m['transformers_eager_e2e_ms_median']:.1f} | "
              f"{m['speedup_vs_transformers_eager']:.1f}x | {m['kestrel_decode_step_ms_median']:.4f} | "
              f"{m['decode_floor_ms_weight_bytes_over_copy_bw']:.4f} | {m['decode_step_over_floor']:.2f} |")


if __name__ == "__main__":
    main()
