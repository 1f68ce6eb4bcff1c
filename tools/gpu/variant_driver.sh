#!/usr/bin/env bash
# A compile-time variant of the GPU driver, for tools/gpu/variants.sh's DRIVER=: one CUDA kernel source of the
# library replaced by another file, everything else as BUILD_DIR built it (run `ninja -C BUILD_DIR` first):
#   tools/gpu/variant_driver.sh BUILD_DIR src/kernels/cuda/ffn.cu /tmp/ffn_no_tail.cu no_tail [OUT_DIR]
# compiles the variant with the original's exact command, puts it into a copy of libkestrel_kernels_cuda.a,
# links kestrel_gpu_driver against that copy and writes it stripped to OUT_DIR/NAME (default build-gpu-var/,
# ignored by git; carry it with the packed build and pass DRIVER=$PWD/build-gpu-var/NAME to variants.sh).
set -euo pipefail
BUILD=$(realpath "${1:?build dir}"); SOURCE=${2:?source in the repository, e.g. src/kernels/cuda/ffn.cu}
VARIANT=$(realpath "${3:?variant source file}"); NAME=${4:?variant name}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "${5:-$ROOT/build-gpu-var}" && realpath "${5:-$ROOT/build-gpu-var}")
LIB=src/kernels/cuda/libkestrel_kernels_cuda.a
OBJ=src/kernels/cuda/CMakeFiles/kestrel_kernels_cuda.dir/$(basename "$SOURCE").o
[ -f "$ROOT/$SOURCE" ] || { echo "variant_driver: $SOURCE is not a file of the repository" >&2; exit 2; }
[[ $NAME =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "variant_driver: NAME must be letters, digits, _ . -" >&2; exit 2; }
# Compiled beside the original (same relative includes), under a name no build globs pick up.
TEMP_SRC=$(dirname "$SOURCE")/_variant_$NAME.cu
WORK=$(mktemp -d); trap 'rm -rf "$WORK"; rm -f "$ROOT/$TEMP_SRC"' EXIT
compile=$(cd "$BUILD" && ninja -t commands "$OBJ" | tail -1)
[[ $compile == *"$SOURCE"* ]] || { echo "variant_driver: no compile command for $SOURCE in $BUILD" >&2; exit 2; }
cp "$VARIANT" "$ROOT/$TEMP_SRC"
compile=${compile//"$ROOT/$SOURCE"/"$ROOT/$TEMP_SRC"}
compile=${compile//"$SOURCE"/"$TEMP_SRC"}
compile=$(sed -E "s# -o [^ ]+# -o $WORK/variant.o#; s# -MF [^ ]+# -MF $WORK/variant.d#" <<< "$compile")
(cd "$BUILD" && eval "$compile")
cp "$BUILD/$LIB" "$WORK/lib.a"
cp "$WORK/variant.o" "$WORK/$(basename "$SOURCE").o"
(cd "$WORK" && ar r lib.a "$(basename "$SOURCE").o")
link=$(cd "$BUILD" && ninja -t commands tests/gpu/kestrel_gpu_driver | tail -1)
link=${link#: && }; link=${link%% && :*}
link=${link//"$LIB"/"$WORK/lib.a"}
link=${link/-o tests\/gpu\/kestrel_gpu_driver/-o $WORK/kestrel_gpu_driver}
(cd "$BUILD" && eval "$link")
strip -o "$OUT/$NAME" "$WORK/kestrel_gpu_driver"
echo "$OUT/$NAME"
