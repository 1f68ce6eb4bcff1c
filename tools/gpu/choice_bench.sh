#!/usr/bin/env bash
# kestrel::generate() (the path of the CLI and the Python package) with token choice on the GPU against logits
# processed on the host (KESTREL_CHOOSE_ON_HOST=1): greedy, top-k/top-p sampling and 4-beam search on random
# weights of real GPT-2 shapes, 64-token prompt, 64 new tokens, fp16, median wall time of 3 warmed calls.
#   tools/gpu/choice_bench.sh BUILD_DIR OUT_DIR [sizes, default small,xl]
set -uo pipefail
BUILD=$(realpath "${1:?build dir}"); OUT=$(realpath "${2:?out dir}"); SIZES=${3:-small,xl}
source "$(dirname "$0")/common.sh"
for size in ${SIZES//,/ }; do
  make_model "$size"
  for mode in greedy sampling beams; do
    for host in 0 1; do
      KESTREL_CHOOSE_ON_HOST=$host "$BUILD/tests/gpu/kestrel_gpu_driver" --model "$TMP/$size" --device cuda \
        --precision fp16 --prompts "$TMP/p.json" --new-tokens 64 --bench-runs 3 --bench-only --max-batch 4 \
        --max-length 256 --generate-bench $mode --out "$TMP/o" 2> "$TMP/err" || { echo "$size $mode: $(tail -2 "$TMP/err")"; continue; }
      where=device; [ $host = 1 ] && where=host
      $PY -c 'import json, statistics, sys
g = json.load(open(sys.argv[1]))["generate"]
print("%-6s %-8s choice on %-6s: %8.2f ms for 64 tokens (runs: %s)" % (sys.argv[2], g["mode"], sys.argv[3], statistics.median(g["wall_ms"]), " ".join("%.2f" % x for x in g["wall_ms"])))' \
        "$TMP/o.json" "$size" "$where" | tee -a "$OUT/choice_bench.txt"
    done
  done
  rm -rf "$TMP/$size"
done
