# Kestrel's two entry points:
#   make run   installs what is missing, builds, and generates text with the built-in models
#   make test  installs what is missing, builds, and runs every test (C++, reference parity, fuzz smoke, sanitizers)
# Other targets: build, deps, venv, fuzz (longer fuzzing: FUZZ_SECONDS=300 make fuzz), bench-cpu, clean.

BUILD        ?= build
BUILD_ASAN   ?= build-asan
BUILD_FUZZ   ?= build-fuzz
VENV         ?= .venv
PYTHON       := $(VENV)/bin/python
JOBS         ?= $(shell nproc)
FUZZ_SECONDS ?= 5
CMAKE_FLAGS  ?=

APT_PACKAGES := cmake ninja-build g++ clang libclang-rt-14-dev pkg-config libgtest-dev nlohmann-json3-dev \
                libcli11-dev libcurl4-openssl-dev libpcre2-dev libsentencepiece-dev libdnnl-dev zlib1g-dev libicu-dev bc \
                python3-venv

.PHONY: run test build deps venv python-package ctest pytest fuzz-smoke fuzz sanitize bench-cpu clean

# --- dependencies ---------------------------------------------------------------------------------------------
# Installs only the Debian packages that are missing (needs root or sudo).
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: tests/requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

# The Python package (python/, scikit-build-core + pybind11) into the venv; its CMake build folder build-pip/ is
# reused between installs. The package's own CUDA path is not built here (CI has no GPU to test it).
python-package: venv deps
	$(PYTHON) -m pip install -q --no-build-isolation -C cmake.define.KESTREL_CUDA=OFF ./python

# --- build -----------------------------------------------------------------------------------------------------
$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD) -j $(JOBS)

# --- run -------------------------------------------------------------------------------------------------------
run: build
	@tools/run_demo.sh $(BUILD)/src/cli/kestrel

# --- tests -----------------------------------------------------------------------------------------------------
test: build venv python-package ctest pytest fuzz-smoke sanitize
	@echo "all tests passed"

ctest: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

pytest: build venv python-package
	KESTREL_BUILD_DIR=$(abspath $(BUILD)) $(PYTHON) -m pytest -q tests

# The loaders and tokenizers under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: deps
	cmake -S . -B $(BUILD_ASAN) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKESTREL_SANITIZE=ON -DKESTREL_CUDA=OFF >/dev/null
	ninja -C $(BUILD_ASAN) -j $(JOBS) io_tests tokenizer_tests
	cd $(BUILD_ASAN) && ./tests/io/io_tests --gtest_brief=1 && ./tests/tokenizers/tokenizer_tests --gtest_brief=1

# libFuzzer targets (clang): a few seconds each in `make test`, longer with FUZZ_SECONDS=N make fuzz.
$(BUILD_FUZZ)/build.ninja: | deps
	cmake -S . -B $(BUILD_FUZZ) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
	  -DCMAKE_CXX_COMPILER=clang++ -DKESTREL_FUZZ=ON -DKESTREL_TESTS=OFF -DKESTREL_CUDA=OFF >/dev/null

fuzz-smoke fuzz: $(BUILD_FUZZ)/build.ninja
	ninja -C $(BUILD_FUZZ) -j $(JOBS) fuzzers
	@for f in $(BUILD_FUZZ)/tests/fuzz/fuzz_*; do \
	  [ -x $$f ] || continue; name=$$(basename $$f | sed 's/^fuzz_//'); \
	  seeds=tests/fuzz/corpus/$$name; [ -d $$seeds ] || seeds=; \
	  work=$(BUILD_FUZZ)/corpus/$$name; mkdir -p $$work; \
	  echo "fuzzing $$name for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 $$work $$seeds 2>$(BUILD_FUZZ)/$$name.log \
	    || { tail -40 $(BUILD_FUZZ)/$$name.log; exit 1; }; \
	done

fuzz: FUZZ_SECONDS = 300

# --- benchmarks ------------------------------------------------------------------------------------------------
bench-cpu: build venv
	KESTREL_BUILD_DIR=$(abspath $(BUILD)) $(PYTHON) bench/cpu_bench.py

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ) build-pip
