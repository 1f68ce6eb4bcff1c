# Sourced by the GPU scripts with BUILD set to a build packed by tests/gpu/pack_build.sh (or a plain CUDA build):
# unpacks the executables and host libraries it carries and puts the libraries on the library path. Host
# libraries the build machine linked may be absent on the GPU machine: lib/ comes first, lib/fallback/ last
# (used only where the system has none).
[ -f "$BUILD/libs.tar.xz" ] && [ ! -d "$BUILD/lib" ] && tar -C "$BUILD" -xJf "$BUILD/libs.tar.xz"
[ -f "$BUILD/bins.tar.xz" ] && [ ! -x "$BUILD/tests/gpu/kestrel_gpu_driver" ] && tar -C "$BUILD" -xJf "$BUILD/bins.tar.xz"
export LD_LIBRARY_PATH="$BUILD/lib:${LD_LIBRARY_PATH:-}:$BUILD/lib/fallback"
