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
du -sh "$DST"
