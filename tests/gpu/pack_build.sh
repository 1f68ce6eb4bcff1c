#!/usr/bin/env bash
# Packs what tests/gpu/run_all.sh needs from a CUDA build into a small folder to carry to a GPU machine:
#   tests/gpu/pack_build.sh build build-gpu-pack
# The GPU test driver and the `kestrel` CLI, stripped, in bins.tar.xz; the host libraries they link go into libs.tar.xz (the GPU
# image may lack them, and ICU data alone is half the carry limit uncompressed): OpenBLAS and its
# Fortran runtime unpack to lib/ (always used), everything else to lib/fallback/ (used only where the system has
# none). run_all.sh unpacks it.
set -euo pipefail
SRC=${1:?cuda build dir}
DST=${2:?output dir}
rm -rf "$DST"
mkdir -p "$DST/tests/gpu" "$DST/src/cli" "$DST/stage/lib/fallback"
strip -o "$DST/tests/gpu/kestrel_gpu_driver" "$SRC/tests/gpu/kestrel_gpu_driver"
strip -o "$DST/src/cli/kestrel" "$SRC/src/cli/kestrel"
libs() { ldd "$SRC/tests/gpu/kestrel_gpu_driver" "$SRC/src/cli/kestrel" | awk '$3 ~ /^\// {print $3}' | sort -u; }
for path in $(libs); do
  name=$(basename "$path")
  case "$name" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++*|libgcc_s*|libcuda.so*) ;;
    libcudart*|libcublas*) ;;  # the GPU machine has the CUDA runtime and cuBLAS of its own toolkit
    libopenblas*|libgfortran*|libquadmath*) cp -L "$path" "$DST/stage/lib/" ;;
    *) cp -L "$path" "$DST/stage/lib/fallback/" ;;
  esac
done
tar -C "$DST/stage" -cJf "$DST/libs.tar.xz" lib
rm -rf "$DST/stage"
# The two executables too (their fat binaries compress about 4x): the carry limit is 64 MiB with the tree.
tar -C "$DST" -cJf "$DST/bins.tar.xz" tests/gpu/kestrel_gpu_driver src/cli/kestrel
rm -rf "$DST/tests" "$DST/src"
# What tests/gpu/build_python_module.sh needs to make the Python package's native module on the GPU machine,
# whose Python this machine lacks: the engine's static libraries (debug info stripped), the header-only
# libraries bindings.cpp includes, and the link line of the CLI (same libraries) as link.txt, one argument a
# line: @PACK@/X.a for a packed library, -l:SONAME for a shared one the pack carries, -lNAME for the CUDA
# toolkit's and the system's.
mkdir -p "$DST/stage/python/include"
cp -r /usr/include/nlohmann "$DST/stage/python/include/"
$(command -v python3) - "$SRC/build.ninja" "$DST/stage/python" "$DST/libs.tar.xz" <<'PYEOF'
import os, re, subprocess, sys
ninja, out, libs = sys.argv[1:]
text = open(ninja).read()
block = text[text.index("build src/cli/kestrel:"):]
line = re.search(r"^  LINK_LIBRARIES = (.*)$", block, re.M).group(1).split()
carried = {os.path.basename(p) for p in subprocess.run(["tar", "-tJf", libs], capture_output=True,
                                                       text=True, check=True).stdout.split()}
args = []
for a in line:
    if a.startswith("-Wl,-rpath"):
        continue
    if a.endswith(".a") and a.startswith("src/"):
        name = os.path.basename(a)
        subprocess.run(["strip", "--strip-debug", "-o", os.path.join(out, name),
                        os.path.join(os.path.dirname(ninja), a)], check=True)
        args.append("@PACK@/" + name)
    elif a.endswith("libpthread.a"):
        args.append("-lpthread")
    elif re.search(r"/cuda[^/]*/", a) and a.endswith(".so"):  # the GPU machine's own toolkit
        args.append("-l" + os.path.basename(a)[3:-3])
    elif a.endswith(".so") or (a.startswith("-l") and a[2:] not in ("dl", "rt", "pthread", "m")
                               and os.path.exists(f"/usr/lib/x86_64-linux-gnu/lib{a[2:]}.so")):
        path = a if a.endswith(".so") else f"/usr/lib/x86_64-linux-gnu/lib{a[2:]}.so"
        dump = subprocess.run(["objdump", "-p", path], capture_output=True, text=True, check=True).stdout
        soname = re.search(r"SONAME\s+(\S+)", dump).group(1)
        if soname in carried:  # else not needed at run time (the executables do not load it)
            args.append("-l:" + soname)
    else:
        args.append(a)
open(os.path.join(out, "link.txt"), "w").write("\n".join(args) + "\n")
PYEOF
tar -C "$DST/stage" -cJf "$DST/python.tar.xz" python
rm -rf "$DST/stage"
du -sh "$DST"
