#!/usr/bin/env bash
# Engine-file build and load on GPT-2 XL shapes (random weights): build time, peak anonymous memory of the build
# (mapped checkpoint pages are file-backed and not counted), file size, and load time (map + checksum every
# section + plan), as JSON on stdout.
#   bench/engine_file_bench.sh [KESTREL_BINARY] [WORK_DIR] > bench/results/engine-file-<date>.json
set -euo pipefail
K=$(realpath "${1:-build/src/cli/kestrel}")
WORK=${2:-/tmp/kestrel-engine-bench}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$WORK"
if [ ! -f "$WORK/gpt2-xl/model.safetensors" ]; then
  "$PY" -c "
import torch, transformers, sys
torch.manual_seed(0)
cfg = transformers.GPT2Config(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257, n_positions=1024)
transformers.GPT2LMHeadModel(cfg).save_pretrained(sys.argv[1])" "$WORK/gpt2-xl" >&2
fi
peak_anon() {  # runs "$@", prints wall seconds and peak RssAnon (kB), sampled every 50 ms
  local start=$(date +%s.%N) max=0 a
  "$@" & local pid=$!
  while kill -0 $pid 2>/dev/null; do
    a=$(awk '/RssAnon/ {print $2}' /proc/$pid/status 2>/dev/null || true)
    [ -n "$a" ] && [ "$a" -gt "$max" ] && max=$a
    sleep 0.05
  done
  wait $pid
  echo "$(echo "$(date +%s.%N) - $start" | bc) $max"
}
rm -f "$WORK/gpt2-xl.kestrel"
read build_s build_kb < <(peak_anon "$K" build "$WORK/gpt2-xl" -o "$WORK/gpt2-xl.kestrel" -q)
loads=()
for i in 1 2 3; do
  s=$(date +%s.%N); "$K" inspect "$WORK/gpt2-xl.kestrel" --json > /dev/null; e=$(date +%s.%N)
  loads+=("$(echo "$e - $s" | bc)")
done
cat <<JSON
{"command": "bench/engine_file_bench.sh $*", "date": "$(date -Iseconds)", "nproc": $(nproc),
 "model": "gpt2-xl shapes, random fp32 weights", "checkpoint_bytes": $(stat -c %s "$WORK/gpt2-xl/model.safetensors"),
 "engine_bytes": $(stat -c %s "$WORK/gpt2-xl.kestrel"), "build_seconds": $build_s,
 "build_peak_anonymous_kib": $build_kb, "load_seconds_inspect": [$(IFS=,; echo "${loads[*]}")],
 "note": "load = map + crc32 of every section + plan; inspect exits right after loading"}
JSON
