#!/usr/bin/env bash
# `make run`: generate with the built-in GPT-2 and T5 (trained by the project, see assets/models/*/MODEL_CARD.md),
# printing the prompt, the output and the speed.
set -euo pipefail
KESTREL=${1:-build/src/cli/kestrel}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

demo() {
  local model=$1 prompt=$2
  shift 2
  echo "== $model"
  echo "prompt: $prompt"
  printf 'output: '
  "$KESTREL" generate "$model" --prompt "$prompt" --stats "$@"
}

demo kestrel-gpt2-kjv "In the beginning" --max-new-tokens 40
demo kestrel-t5-kjv "In the beginning God <extra_id_0> the heaven and the earth." --max-new-tokens 10
