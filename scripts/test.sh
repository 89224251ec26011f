#!/usr/bin/env bash
# Every test: installs what the build needs, fetches the test model(s), then runs the Rust unit
# and integration tests (real models through real llama.cpp) in release mode. llama.cpp is built
# once, optimised, and shared by the tests and the binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/native-env.sh
scripts/setup.sh
python3 scripts/fetch_models.py smollm2
export EDGECASCADE_MODELS=${EDGECASCADE_MODELS:-$root/models}
cargo test --release --workspace "$@"
