# Quick start: `make serve` and `make test` (as root on Debian 12; see README.md).
BUILD_DIR ?= build
BUILD_TYPE ?= Release
# Warnings are errors in CI (CI=true is set by the CI runner).
WERROR ?= $(if $(CI),ON,OFF)
PORT ?= 50051
METRICS_PORT ?= 9090
MODEL_REPOSITORY ?= models/repository

.PHONY: deps configure build serve test node-deps clean format

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

format:
	find proto server client models tests -name '*.cc' -o -name '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
