# Quick start: `make serve` and `make test` (as root on Debian 12; see README.md).
BUILD_DIR ?= build
BUILD_TYPE ?= Release
# Warnings are errors in CI (CI=true is set by the CI runner).
WERROR ?= $(if $(CI),ON,OFF)
PORT ?= 50051
METRICS_PORT ?= 9090
MODEL_REPOSITORY ?= models/repository

.PHONY: deps configure build serve test node-deps clean format asan tsan fuzz fuzz-build fuzz-smoke

deps:
	bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja: | deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DDINO_WERROR=$(WERROR)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR)

serve: build
	$(BUILD_DIR)/bin/dino-server --model_repository=$(MODEL_REPOSITORY) \
	  --port=$(PORT) --metrics_port=$(METRICS_PORT)

# The Node client's npm packages (client/node/package-lock.json), for its test in ctest.
node-deps: client/node/node_modules/.package-lock.json

client/node/node_modules/.package-lock.json: client/node/package-lock.json | deps
	cd client/node && npm ci --no-audit --no-fund

test: build node-deps
	ctest --test-dir $(BUILD_DIR) --output-on-failure --timeout 900

# Sanitizer trees (README "Sanitizers and fuzzing"): each configures its own build folder with
# g++ and -fsanitize, builds what its tests need and runs them with the options and
# suppressions of scripts/sanitizers/.
ASAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
FUZZ_DIR ?= build-fuzz
SANITIZERS = $(CURDIR)/scripts/sanitizers
# ASAN_TARGETS: what to build (default: everything); ASAN_TESTS: a ctest -R regex choosing the
# tests (default: all). CI narrows both to a subset (.ci/run).
ASAN_TARGETS ?=
ASAN_TESTS ?=
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1:detect_stack_use_after_return=1 \
  LSAN_OPTIONS=suppressions=$(SANITIZERS)/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$(SANITIZERS)/ubsan.supp
# LibTorch's OpenMP pool is not instrumented either: one intra-op thread keeps its
# synchronization out of TSan's sight, while every thread of ours is still checked.
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(SANITIZERS)/tsan.supp \
  OMP_NUM_THREADS=1
SANITIZER_CMAKE = -G Ninja -DCMAKE_BUILD_TYPE=Release -DDINO_WERROR=OFF

$(ASAN_DIR)/build.ninja: | deps
	cmake -S . -B $(ASAN_DIR) $(SANITIZER_CMAKE) -DDINO_SANITIZE=address,undefined

asan: $(ASAN_DIR)/build.ninja node-deps
	cmake --build $(ASAN_DIR) $(if $(ASAN_TARGETS),--target $(ASAN_TARGETS))
	env $(ASAN_ENV) ctest --test-dir $(ASAN_DIR) --output-on-failure --timeout 1800 \
	  $(if $(ASAN_TESTS),-R '$(ASAN_TESTS)')

$(TSAN_DIR)/build.ninja: | deps
	cmake -S . -B $(TSAN_DIR) $(SANITIZER_CMAKE) -DDINO_SANITIZE=thread

# Only the programs the concurrency tests (label tsan) run.
tsan: $(TSAN_DIR)/build.ninja
	cmake --build $(TSAN_DIR) --target tsan_tests
	env $(TSAN_ENV) ctest --test-dir $(TSAN_DIR) --output-on-failure --timeout 1800 -L tsan

# Fuzzing (fuzz/): clang with libFuzzer, ASan and UBSan; only the fuzz targets and the
# libraries they need are built. `make fuzz SECONDS=N` fuzzes every target for N seconds;
# `make fuzz-smoke` for DINO_FUZZ_SMOKE_SECONDS (3) each through ctest. `make test` runs the g++
# stand-in instead (fuzz_corpus.*: corpus and mutants), which needs no clang.
SECONDS ?= 60
$(FUZZ_DIR)/build.ninja:
	bash scripts/install-deps.sh --fuzz
	cmake -S . -B $(FUZZ_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release -DDINO_WERROR=OFF \
	  -DCMAKE_CXX_COMPILER=clang++-14 -DDINO_FUZZ=ON

fuzz-build: $(FUZZ_DIR)/build.ninja
	cmake --build $(FUZZ_DIR) --target fuzzers

fuzz: fuzz-build
	for target in $$(ls $(FUZZ_DIR)/bin/*_fuzzer); do \
	  bash fuzz/run_fuzzer.sh $$target $(SECONDS) || exit 1; \
	done

fuzz-smoke: fuzz-build
	ctest --test-dir $(FUZZ_DIR) --output-on-failure -L fuzz

format:
	find proto server client models tests fuzz -name '*.cc' -o -name '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR) $(FUZZ_DIR)
