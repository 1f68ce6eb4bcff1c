#!/usr/bin/env bash
# Decode-step timings of Kestrel under environment variants, one model build each, on the GPU machine:
#   tools/gpu/variants.sh BUILD_DIR OUT_DIR "small,xl" "A=1 B=2" "A=2" ...
# Each variant is a space-separated list of VAR=VALUE (use "-" for none); DRIVER=PATH runs another build's
# kestrel_gpu_driver (a compile-time variant) with this build's libraries. PROMPT_TOKENS (default 64) and
# MAX_LENGTH (default 256) set the prompt and the planned tokens a row; a variant's MAX_LENGTH=n plans n for
# that variant alone. ROWS (default 1) prompts run as one batch (--max-batch ROWS). Prints and writes OUT_DIR/variants.txt.
set -uo pipefail
BUILD=$(realpath "${1:?build dir}"); OUT=$(realpath "${2:?out dir}"); SIZES=$3; shift 3
source "$(dirname "$0")/common.sh"
for size in ${SIZES//,/ }; do
  make_model "$size"
  for variant in "$@"; do
    envs=(); [ "$variant" != "-" ] && read -ra envs <<< "$variant"
    driver="$BUILD/tests/gpu/kestrel_gpu_driver"; max_length=${MAX_LENGTH:-256}
    for i in "${!envs[@]}"; do
      [[ ${envs[$i]} == DRIVER=* ]] && { driver=${envs[$i]#DRIVER=}; unset "envs[$i]"; }
      [[ ${envs[$i]:-} == MAX_LENGTH=* ]] && { max_length=${envs[$i]#MAX_LENGTH=}; unset "envs[$i]"; }
    done
    timeout 180 env "${envs[@]}" "$driver" --model "$TMP/$size" --device cuda --precision fp16 \
      --prompts "$TMP/p.json" --new-tokens 64 --bench-runs 3 --bench-only --max-batch "${ROWS:-1}" --max-length "$max_length" \
      --out "$TMP/o" 2> "$TMP/err" || { echo "$size [$variant] failed: $(tail -2 "$TMP/err")"; continue; }
    # "same k": the greedy tokens agree with the size's first variant for the first k (random weights give
    # near ties, so a 16-bit variant may tip one; a wrong kernel agrees for none)
    $PY - "$TMP/o.json" "$size" "$variant" "$TMP/ref_$size.json" <<'PYEOF' | tee -a "$OUT/variants.txt"
import json, os, statistics as s, sys
o = json.load(open(sys.argv[1])); b = o["bench"]; tokens = o["greedy_device"][0]
if not os.path.exists(sys.argv[4]):
    json.dump(tokens, open(sys.argv[4], "w"))
ref = json.load(open(sys.argv[4]))
same = next((i for i, (x, y) in enumerate(zip(tokens, ref)) if x != y), len(tokens))
ahead = "" if "token_ahead_ms" not in b else (
    f"token {s.median(b['token_ahead_ms']):.4f} ms  e2e ahead {s.median(b['e2e_ahead_ms']):.2f} ms  "
    f"ahead {'same' if o['greedy_ahead'] == o['greedy_device'] else 'DIFFERS'}  ")
print(f"{sys.argv[2]:8s} [{sys.argv[3]}] step {s.median(b['step_ms']):.4f} ms  e2e {s.median(b['e2e_ms']):.2f} ms  "
      f"{ahead}first {s.median(b['first_ms']):.3f} ms  same {same}/{len(tokens)}")
PYEOF
  done
  rm -rf "$TMP/$size"
done
