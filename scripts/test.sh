#!/usr/bin/env bash
# Every test: installs what the build needs, fetches the test model(s), then runs the Rust unit
# and integration tests (real models through real llama.cpp) in release mode. llama.cpp is built
# once, optimised, and shared by the tests and the binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/native-env.sh
scripts/setup.sh
python3 scripts/fetch_models.py smollm2 qwen05
export EDGECASCADE_MODELS=${EDGECASCADE_MODELS:-$root/models}
# The official OpenAI Python client (pinned), in a venv, for the serve tests.
venv=${EDGECASCADE_VENV:-$root/.cache/venv}
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q openai==3.54.0
fi
export EDGECASCADE_PYTHON="$venv/bin/python"
cargo test --release --workspace "$@"
