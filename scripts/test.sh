#!/usr/bin/env bash
# Every test: installs what the build needs, fetches the test model(s), then runs the Rust unit
# and integration tests (real models through real llama.cpp) in release mode, then the Kotlin
# SDK's tests on the JVM and the Python bindings' tests against the same native library, and the
# Swift SDK's checks against its generated bindings, the core without structured output
# (the smaller mobile build), and the arm64 build run under qemu-aarch64. llama.cpp is built
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
# --no-fail-fast: one failing test binary does not hide the results of the others.
cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The Kotlin SDK on the JVM and the Python bindings, against the same host library (only for a
# whole-suite run).
if [ $# -eq 0 ]; then
  # A suite that dies before its "test result:" line (a compile error) counts as one failure.
  suite() { # name, script
    local out rc
    out=$(mktemp)
    "$2" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    cat "$out" >> "$log"
    if [ "$rc" != 0 ] && ! grep -q "^test result: $1\." "$out"; then
      echo "test result: $1. 0 passed; 1 failed; ($2 exited with $rc before reporting)" | tee -a "$log"
    fi
    rm -f "$out"
    [ "$status" = 0 ] && status=$rc
    return 0
  }
  suite kotlin scripts/test-kotlin.sh
  suite python scripts/test-python.sh
  suite swift scripts/check-swift.sh
  suite neon scripts/check-neon.sh
  suite lean scripts/test-lean.sh
  suite arm64 scripts/test-arm64.sh
fi
set -e
# One closing line over every suite (cargo's own last lines are doc-test runs with 0 tests).
summary=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log")
[ -n "${EDGECASCADE_TEST_SUMMARY:-}" ] && echo "$summary" > "$EDGECASCADE_TEST_SUMMARY"
echo "$summary"
exit "$status"
