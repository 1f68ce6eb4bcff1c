#!/usr/bin/env bash
# Per-kernel profile of Kestrel's decode on the GPU machine (Nsight Compute, clocks left alone):
#   tools/gpu/profile_decode.sh BUILD_DIR OUT_DIR [sizes]
# Writes OUT_DIR/ncu_<size>.csv (one row per kernel launch: duration, DRAM bytes read, grid) for a run of a
# 64-token prompt and 3 greedy tokens on random weights of real GPT-2 shapes; tools/gpu/ncu_step.py summarises
# one decode step of it.
set -uo pipefail
BUILD=$(realpath "${1:?build dir}")
OUT=$(realpath "${2:?output dir}")
SIZES=${3:-small,xl}
source "$(dirname "$0")/common.sh"
for size in ${SIZES//,/ }; do
  make_model "$size" 50000 0
  timeout 400 ncu --clock-control none --csv --page raw \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size,launch__registers_per_thread \
    "$BUILD/tests/gpu/kestrel_gpu_driver" --model "$TMP/$size" --device cuda --precision fp16 \
    --prompts "$TMP/p.json" --new-tokens 3 --max-batch 1 --max-length 256 --out "$TMP/o_$size" \
    > "$OUT/ncu_$size.csv" 2> "$OUT/ncu_$size.err"
  echo "$size rc=$?"
  rm -rf "$TMP/$size"
done
