#!/usr/bin/env bash
# Every test: installs what the build needs, fetches the test model(s), then runs the Rust unit
# and integration tests (real models through real llama.cpp) in release mode, then the Kotlin
# SDK's tests on the JVM and the Python bindings' tests against the same native library, and the
# Swift SDK's checks against its generated bindings. llama.cpp is built
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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The Kotlin SDK on the JVM and the Python bindings, against the same host library (only for a
# whole-suite run).
if [ $# -eq 0 ]; then
  scripts/test-kotlin.sh 2>&1 | tee -a "$log"
  kotlin=${PIPESTATUS[0]}
  [ "$status" = 0 ] && status=$kotlin
  scripts/test-python.sh 2>&1 | tee -a "$log"
  python=${PIPESTATUS[0]}
  [ "$status" = 0 ] && status=$python
  scripts/check-swift.sh 2>&1 | tee -a "$log"
  swift=${PIPESTATUS[0]}
  [ "$status" = 0 ] && status=$swift
fi
set -e
# One closing line over every suite (cargo's own last lines are doc-test runs with 0 tests).
summary=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log")
[ -n "${EDGECASCADE_TEST_SUMMARY:-}" ] && echo "$summary" > "$EDGECASCADE_TEST_SUMMARY"
echo "$summary"
exit "$status"
