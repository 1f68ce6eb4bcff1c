"""One decode step from an Nsight Compute CSV of tools/gpu/profile_decode.sh: the launches from the second-last
embedding kernel (a step's first) to the last, grouped by kernel, with time, DRAM bytes read and read rate, then
the step's first launches.

  python tools/gpu/ncu_step.py OUT/prof/ncu_xl.csv [more.csv ...]
"""
import csv, io, sys, collections
def rows(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    start = text.find('"ID"')
    reader = csv.reader(io.StringIO(text[start:]))
    header = next(reader); next(reader)
    return [dict(zip(header, r)) for r in reader if len(r) == len(header)]
for path in sys.argv[1:]:
    L = rows(path)
    idx = [i for i, r in enumerate(L) if "embedding_kernel" in r["Kernel Name"]]
    print(path, "embedding at", idx)
    if len(idx) < 2: continue
    step = L[idx[-2]: idx[-1]]
    tot = sum(float(r["gpu__time_duration.sum"].replace(",", "")) for r in step)
    byts = sum(float(r["dram__bytes_read.sum"].replace(",", "")) for r in step)
    print(f"one step: {len(step)} launches, {tot/1e3:.1f} us kernel time, {byts/1e6:.1f} MB, {byts/tot:.0f} GB/s")
    g = collections.OrderedDict()
    for r in step:
        n = r["Kernel Name"].split("(")[0][-60:]
        x = g.setdefault(n, [0, 0.0, 0.0, r["launch__grid_size"], r["launch__registers_per_thread"]])
        x[0] += 1; x[1] += float(r["gpu__time_duration.sum"].replace(",", "")); x[2] += float(r["dram__bytes_read.sum"].replace(",", ""))
    for n, (c, ns, b, grid, regs) in sorted(g.items(), key=lambda kv: -kv[1][1]):
        print(f"{ns/1e3:8.1f} us {c:4d}x {ns/c/1e3:6.2f} us/launch {b/1e6:8.1f} MB {b/ns:6.0f} GB/s grid {grid} regs {regs} {n}")
    print("first 14 launches of the step:")
    for r in step[:14]:
        print(f'  {float(r["gpu__time_duration.sum"].replace(",", ""))/1e3:7.2f} us grid {r["launch__grid_size"]:>6} {r["Kernel Name"].split("(")[0][-70:]}')
