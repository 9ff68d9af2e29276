#!/usr/bin/env bash
# Installs the Debian 12 packages dino-serve needs, and only those that are missing.
# Used by the Makefile (make serve / make test), .ci/run and the Dockerfile.
#   scripts/install-deps.sh          build + test dependencies
#   scripts/install-deps.sh --runtime  only the shared libraries the server needs to run
#   scripts/install-deps.sh --fuzz     also clang and libFuzzer, for make fuzz (not CI's)
set -euo pipefail

BUILD_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0-pthread
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libeigen3-dev zlib1g-dev libcli11-dev
  libgtest-dev libgmock-dev libcpp-httplib-dev
  nodejs npm
  python3 python3-torch python3-numpy python3-grpcio python3-protobuf python3-matplotlib
  python3-yaml prometheus
)
RUNTIME_PACKAGES=(
  libtorch1.13 libopenblas0-pthread libgrpc++1.51 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libcpp-httplib0.11 zlib1g ca-certificates
)

# clang 14 and its runtime libraries, libFuzzer among them (libclang_rt.fuzzer).
FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev)

packages=("${BUILD_PACKAGES[@]}")
if [[ "${1:-}" == "--runtime" ]]; then packages=("${RUNTIME_PACKAGES[@]}"); fi
if [[ "${1:-}" == "--fuzz" ]]; then packages+=("${FUZZ_PACKAGES[@]}"); fi

missing=()
for p in "${packages[@]}"; do
  # Node.js from elsewhere (e.g. NodeSource's nodejs, which bundles npm) does as well as
  # Debian's, and Debian's npm would conflict with it.
  if [[ "$p" == "nodejs" ]] && command -v node >/dev/null; then continue; fi
  if [[ "$p" == "npm" ]] && command -v npm >/dev/null; then continue; fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
