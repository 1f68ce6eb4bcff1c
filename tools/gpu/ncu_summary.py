"""Summarises an Nsight Compute CSV from tools/gpu/profile_decode.sh: the kernels of the last decode step, grouped
by name, with time and achieved DRAM read bandwidth.

  python tools/gpu/ncu_summary.py OUT/ncu_xl.csv [--step-kernels N]
"""
import argparse
import collections
import csv
import io


def rows(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    start = text.find('"ID"')
    reader = csv.reader(io.StringIO(text[start:]))
    header = next(reader)
    next(reader)  # units
    for r in reader:
        if len(r) == len(header):
            yield dict(zip(header, r))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--last", type=int, default=0, help="only the last N launches (one decode step)")
    args = ap.parse_args()
    launches = list(rows(args.csv))
    if args.last:
        launches = launches[-args.last:]
    groups = collections.OrderedDict()
    total_ns = total_bytes = 0.0
    for r in launches:
        name = r["Kernel Name"].split("(")[0][:70]
        ns = float(r["gpu__time_duration.sum"].replace(",", ""))
        b = float(r["dram__bytes_read.sum"].replace(",", ""))
        g = groups.setdefault(name, [0, 0.0, 0.0, r.get("launch__grid_size", ""), r.get("launch__registers_per_thread", "")])
        g[0] += 1
        g[1] += ns
        g[2] += b
        total_ns += ns
        total_bytes += b
    print(f"{len(launches)} launches, {total_ns / 1e3:.1f} us of kernel time, {total_bytes / 1e6:.1f} MB read, "
          f"{total_bytes / total_ns:.0f} GB/s")
    for name, (n, ns, b, grid, regs) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"{ns / 1e3:9.1f} us {n:5d}x {ns / n / 1e3:7.2f} us/launch {b / 1e6:9.1f} MB {b / ns if ns else 0:7.0f} GB/s "
              f"grid {grid} regs {regs}  {name}")


if __name__ == "__main__":
    main()
