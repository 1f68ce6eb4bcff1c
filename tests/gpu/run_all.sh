#!/usr/bin/env bash
# One device call: GPU parity suite, compute-sanitizer memcheck (and racecheck, synccheck of the bulk-copy
# kernels) on a short generation of each model type, the Python package on the GPU, the CLI, and the GPU
# benchmark, using a build made beforehand and packed by tests/gpu/pack_build.sh (carry it):
#   tests/gpu/run_all.sh BUILD_DIR OUT_DIR [gpu_bench.py arguments, default: --models gpt2-small,gpt2-xl]
# Everything lands under OUT_DIR as few files: parity.log, parity.jsonl, memcheck.log, python.log, bench.log,
# bench.json. SKIP=parity,memcheck,python,cli,bench leaves stages out (e.g. a benchmark-only call).
set -uo pipefail
BUILD=$(realpath "${1:?build dir}")
OUT=$(realpath "${2:?output dir}")
shift 2
BENCH_ARGS=("$@")
[ ${#BENCH_ARGS[@]} -eq 0 ] && BENCH_ARGS=(--models gpt2-small,gpt2-xl)
SKIP=",${SKIP:-},"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
source "$ROOT/tests/gpu/use_build.sh"
export PYTHONUNBUFFERED=1 KESTREL_BUILD_DIR="$BUILD" KESTREL_GPU_REPORT="$OUT/parity.jsonl" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
status=0

echo "== parity" | tee "$OUT/summary.txt"
[[ $SKIP == *,parity,* ]] || (cd "$ROOT" && timeout 480 $PY -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_parity.py) > "$OUT/parity.log" 2>&1 \
  || status=1
tail -n 3 "$OUT/parity.log" | tee -a "$OUT/summary.txt"

echo "== memcheck" | tee -a "$OUT/summary.txt"
if [[ $SKIP != *,memcheck,* ]]; then
MC=$(mktemp -d)
$PY - "$MC" <<'PYEOF'
import pathlib, sys
sys.path.insert(0, "tests/gpu")
import gpu_models as g
d = pathlib.Path(sys.argv[1])
g.small_gpt2(d / "gpt2"); g.small_t5(d / "t5", gated=True)
g.write_rows(d / "p.json", [[5, 6, 7, 8], [9, 10]]); g.write_rows(d / "s.json", [[0, 4, 5], [0, 6]])
PYEOF
for m in gpt2 t5; do
  for p in fp16 fp32; do
    # fp16 with the one-kernel feed-forward block forced (these models are below its size threshold; its
    # bulk-copy form on sm_90) and the opt-in QKV GEMV inside attention, fp32 with the opt-in bulk-copy GEMV
    # and the projecting attention's cached keys staged in shared memory (by default only for wide heads).
    ffn=$([ $p = fp16 ] && echo 1 || echo auto)
    gemv_bulk=$([ $p = fp32 ] && echo 1 || echo 0)
    KESTREL_ATTN_STAGE_KEYS=16 KESTREL_FFN_KERNEL=$ffn KESTREL_FFN_BULK=$ffn KESTREL_ATTN_QKV=$ffn KESTREL_GEMV_BULK=$gemv_bulk timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/tests/gpu/kestrel_gpu_driver" \
      --model "$MC/$m" --device cuda --precision $p --prompts "$MC/p.json" --score "$MC/s.json" --new-tokens 4 \
      --max-batch 2 --max-length 32 --out "$MC/o_$m" >> "$OUT/memcheck.log" 2>&1
    rc=$?; echo "memcheck $m $p ffn=$ffn gemv_bulk=$gemv_bulk rc=$rc" | tee -a "$OUT/summary.txt"; [ $rc -eq 0 ] || status=1
  done
  # Token choice on the GPU (kernels/cuda/choose.cu): sampling with every processor and several sequences a
  # prompt, then beam candidates.
  if [ -x "$BUILD/src/cli/kestrel" ]; then
    for choice in "sampling|--do-sample --seed 1 --top-k 20 --top-p 0.9 --temperature 0.7 --repetition-penalty 1.3 --num-return-sequences 2 --max-batch 4" \
                  "beams|--num-beams 3 --repetition-penalty 1.2 --max-batch 6"; do
      read -ra opts <<< "${choice#*|}"
      KESTREL_CACHE="$MC/cache" timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$BUILD/src/cli/kestrel" generate "$MC/$m" --device cuda --prompt-ids 5,6,7 --prompt-ids 9,10 \
        --max-new-tokens 6 --min-new-tokens 2 "${opts[@]}" --json >> "$OUT/memcheck.log" 2>&1
      rc=$?; echo "memcheck $m ${choice%%|*} rc=$rc" | tee -a "$OUT/summary.txt"; [ $rc -eq 0 ] || status=1
    done
  fi
  # Shared-memory races and barrier misuse in the kernels that split a block into roles (bulk-copy producer and
  # consumers, named barriers between them): the bulk FFN (tensor-core consumers in fp16) and the bulk GEMV;
  # and the attention kernel with the QKV GEMV inside (its blocks wait for each other).
  for tool in racecheck synccheck; do
    KESTREL_FFN_KERNEL=1 KESTREL_FFN_BULK=1 KESTREL_ATTN_QKV=1 KESTREL_GEMV_BULK=1 timeout 240 compute-sanitizer --tool $tool \
      --error-exitcode 9 "$BUILD/tests/gpu/kestrel_gpu_driver" --model "$MC/$m" --device cuda --precision fp16 \
      --prompts "$MC/p.json" --new-tokens 3 --max-batch 2 --max-length 32 --out "$MC/o_$m" >> "$OUT/memcheck.log" 2>&1
    rc=$?; echo "$tool $m fp16 ffn=1 gemv_bulk=1 rc=$rc" | tee -a "$OUT/summary.txt"; [ $rc -eq 0 ] || status=1
  done
  # And the projecting attention with cached keys staged in shared memory by cp.async.
  KESTREL_ATTN_STAGE_KEYS=16 timeout 240 compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$BUILD/tests/gpu/kestrel_gpu_driver" --model "$MC/$m" --device cuda --precision fp32 --prompts "$MC/p.json" \
    --new-tokens 3 --max-batch 2 --max-length 32 --out "$MC/o_$m" >> "$OUT/memcheck.log" 2>&1
  rc=$?; echo "racecheck $m fp32 staged keys rc=$rc" | tee -a "$OUT/summary.txt"; [ $rc -eq 0 ] || status=1
done
fi

echo "== python" | tee -a "$OUT/summary.txt"
# The Python package with the CUDA backend, made for this machine's Python (tests/gpu/build_python_module.sh),
# against transformers on this GPU (tests/gpu/test_gpu_python.py).
# The benchmark also times generate() through it.
PYDEST=
if [[ $SKIP != *,python,* || $SKIP != *,bench,* ]]; then
  PYDEST=$(mktemp -d)
  (cd "$ROOT" && bash tests/gpu/build_python_module.sh "$BUILD" "$PYDEST") > "$OUT/python.log" 2>&1 \
    || { echo "building the Python module failed" >> "$OUT/python.log"; PYDEST=; status=1; }
fi
if [[ $SKIP != *,python,* ]] && [ -n "$PYDEST" ]; then
  (cd "$ROOT" && KESTREL_PY_REQUIRED=1 PYTHONPATH="$PYDEST${PYTHONPATH:+:$PYTHONPATH}" timeout 300 \
    $PY -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_python.py) >> "$OUT/python.log" 2>&1 || status=1
fi
[[ $SKIP == *,python,* ]] || tail -n 3 "$OUT/python.log" | tee -a "$OUT/summary.txt"

echo "== cli" | tee -a "$OUT/summary.txt"
# The kestrel CLI on the built-in models: cuda fp32 must print exactly what cpu prints; fp16 is reported.
K="$BUILD/src/cli/kestrel"
if [ -x "$K" ] && [[ $SKIP != *,cli,* ]]; then
  export KESTREL_CACHE=$(mktemp -d)
  for m in "kestrel-gpt2-kjv|In the beginning" "kestrel-t5-kjv|In the beginning God <extra_id_0> the heaven and the earth."; do
    name=${m%%|*}; prompt=${m#*|}
    cpu=$("$K" generate "$name" --prompt "$prompt" --device cpu --json 2>>"$OUT/cli.log")
    f32=$("$K" generate "$name" --prompt "$prompt" --device cuda --precision fp32 --json 2>>"$OUT/cli.log")
    f16=$("$K" generate "$name" --prompt "$prompt" --device auto --json --stats 2>>"$OUT/cli.log")
    beam=$("$K" generate "$name" --prompt "$prompt" --device cuda --precision fp32 --num-beams 4 --json 2>>"$OUT/cli.log")
    beam_cpu=$("$K" generate "$name" --prompt "$prompt" --device cpu --num-beams 4 --json 2>>"$OUT/cli.log")
    printf '%s\n cpu      %s\n cuda32   %s\n auto16   %s\n beam-gpu %s\n beam-cpu %s\n' "$name" "$cpu" "$f32" "$f16" \
      "$beam" "$beam_cpu" | tee -a "$OUT/summary.txt"
    # Token ids must agree (beam scores may differ in the last float digits between devices).
    ids() { $PY -c 'import json,sys; print(json.load(sys.stdin)["ids"])' 2>/dev/null; }
    [ -n "$cpu" ] && [ "$(ids <<<"$cpu")" = "$(ids <<<"$f32")" ] && [ "$(ids <<<"$beam")" = "$(ids <<<"$beam_cpu")" ] \
      || { echo "cli mismatch: $name" | tee -a "$OUT/summary.txt"; status=1; }
  done
  tail -n 5 "$OUT/cli.log" >> "$OUT/summary.txt"
fi

echo "== bench" | tee -a "$OUT/summary.txt"
PYBENCH=(); [ -n "$PYDEST" ] && PYBENCH=(--python)
[[ $SKIP == *,bench,* ]] || (cd "$ROOT" && PYTHONPATH="$PYDEST${PYTHONPATH:+:$PYTHONPATH}" timeout 540 \
  $PY bench/gpu_bench.py --build "$BUILD" --out "$OUT/bench.json" "${BENCH_ARGS[@]}" "${PYBENCH[@]}") \
  > "$OUT/bench.log" 2>&1 || status=1
tail -n 4 "$OUT/bench.log" | tee -a "$OUT/summary.txt"
exit $status
