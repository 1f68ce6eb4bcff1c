# Sourced by the tools/gpu scripts after they set BUILD and OUT: the repository root, the Python to run, the
# carried build's libraries on the library path, a scratch folder, and make_model.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
source "$ROOT/tests/gpu/use_build.sh"
TMP=$(mktemp -d)

# make_model SIZE [MODULUS OFFSET]: random weights of real shapes in $TMP/SIZE (GPT-2 sizes small..xl, or
# t5-small..t5-3b) and ROWS (default 1) prompts of PROMPT_TOKENS (default 64) tokens in $TMP/p.json, token i
# of row r = (i * 7919 + r * 131) % MODULUS + OFFSET (default 30000, 2).
make_model() {
  (cd "$ROOT" && $PY - "$TMP" "$1" "${2:-30000}" "${3:-2}" "${PROMPT_TOKENS:-64}" "${ROWS:-1}" <<'PYEOF'
import pathlib, sys
sys.path.insert(0, "tests/gpu")
import gpu_models as g
d = pathlib.Path(sys.argv[1]); size = sys.argv[2]
modulus, offset, n, rows = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if size.startswith("t5-"):
    g.real_shape_t5(d / size, size[3:])
else:
    g.real_shape_gpt2(d / size, size)
g.write_rows(d / "p.json", [[(i * 7919 + r * 131) % modulus + offset for i in range(n)] for r in range(rows)])
PYEOF
  ) > /dev/null 2>&1
}
