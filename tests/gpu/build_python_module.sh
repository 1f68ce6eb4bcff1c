#!/usr/bin/env bash
# Makes the Python package, with the CUDA backend, for the Python of the machine it runs on (the GPU
# machine's: the build machine has another), from a build packed by tests/gpu/pack_build.sh:
#   tests/gpu/build_python_module.sh BUILD_DIR DEST     (then: PYTHONPATH=DEST python3 -c 'import kestrel')
# Only python/src/bindings.cpp is compiled here, against this Python and its pybind11; it is linked with the
# engine's packed static libraries and the CUDA toolkit found beside nvcc. Run from the repository root.
set -euo pipefail
BUILD=$(realpath "${1:?packed build dir}")
DEST=${2:?destination folder}
PY=${PYTHON:-python3}
source tests/gpu/use_build.sh
if [ ! -f "$BUILD/python.tar.xz" ]; then
  echo "$BUILD has no python.tar.xz: pack the build with tests/gpu/pack_build.sh" >&2
  exit 2
fi
[ -d "$BUILD/python" ] || tar -C "$BUILD" -xJf "$BUILD/python.tar.xz"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
suffix=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
mapfile -t link < <(sed "s|@PACK@|$BUILD/python|" "$BUILD/python/link.txt")
mkdir -p "$DEST/kestrel"
cp python/kestrel/*.py "$DEST/kestrel/"
# The system's c++, not $CXX: the GPU machine's environment names another toolchain there, whose module
# crashed in std::ostream (two C++ runtimes' locale state in one process); KESTREL_CXX overrides it.
# shellcheck disable=SC2046  # pybind11 --includes prints several -I flags
${KESTREL_CXX:-c++} -O2 -std=c++20 -fPIC -shared -fvisibility=hidden -fopenmp -DNDEBUG -DKESTREL_HAVE_CUDA=1 \
  -I src -I include -isystem "$BUILD/python/include" $($PY -m pybind11 --includes) \
  python/src/bindings.cpp -o "$DEST/kestrel/_kestrel$suffix" \
  -L"$BUILD/lib" -L"$BUILD/lib/fallback" -L"$CUDA_HOME/lib64" -L"$CUDA_HOME/targets/x86_64-linux/lib" \
  "${link[@]}"
echo "built $DEST/kestrel/_kestrel$suffix"
