#!/usr/bin/env bash
# Where the persistent decode-step kernel (src/kernels/cuda/step_kernel.cu) spends its time, on the GPU machine:
#   tools/gpu/profile_step_kernel.sh BUILD_DIR OUT_DIR [size] [KESTREL_STEP_DEBUG values...]
# Nsight Compute on one step of a 64-token greedy run (GPT-2 shapes, random weights): duration, DRAM throughput
# and the average stall reasons of its warps, once per debug value (0 = the whole step); OUT_DIR/ncu_step_*.txt.
set -uo pipefail
BUILD=$(realpath "${1:?build dir}"); OUT=$(realpath "${2:?out dir}"); SIZE=${3:-small}; shift 3 || shift $#
source "$(dirname "$0")/common.sh"
make_model "$SIZE"
for debug in "${@:-0}"; do
  KESTREL_STEP_KERNEL=1 KESTREL_STEP_DEBUG=$debug timeout 200 ncu --clock-control none --kernel-name regex:step_kernel \
    --launch-skip 5 --launch-count 1 \
    --metrics 'gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    "$BUILD/tests/gpu/kestrel_gpu_driver" --model "$TMP/$SIZE" --device cuda --precision fp16 --prompts "$TMP/p.json" \
    --new-tokens 8 --max-batch 1 --max-length 256 --out "$TMP/o" > "$OUT/ncu_step_${SIZE}_$debug.txt" 2>&1
  echo "== $SIZE debug=$debug"
  grep -E "duration|dram__throughput|stalled" "$OUT/ncu_step_${SIZE}_$debug.txt" | awk '$NF+0 > 0.05 || /duration|dram/' \
    | sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | awk '{print "  " $1, $(NF-1), $NF}'
done
