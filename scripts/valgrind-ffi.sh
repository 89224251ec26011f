#!/usr/bin/env bash
# The FFI's create / generate / close path under valgrind's memcheck: two runtimes through
# edgecascade-ffi (bindings/tests/leaks.rs), every leak kind reported, and a non-zero exit on a
# definite leak. Slow (a few minutes): a measurement for the README, not part of CI.
#
#   scripts/valgrind-ffi.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v valgrind >/dev/null || sudo apt-get install -y valgrind
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
export EDGECASCADE_MODELS=${EDGECASCADE_MODELS:-$root/models}
python3 scripts/fetch_models.py smollm2 >/dev/null
bin=$(cargo test --release -p edgecascade-ffi --test leaks --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "leaks":
        print(m["executable"])')
EDGECASCADE_LEAK_ITERATIONS=2 valgrind --leak-check=full --show-leak-kinds=definite,indirect \
  --errors-for-leak-kinds=definite --error-exitcode=3 --num-callers=30 \
  "$bin" --test-threads=1 2>&1 | tee "${TMPDIR:-/tmp}/valgrind-ffi.log" | grep -E "definitely lost|indirectly lost|possibly lost|still reachable|ERROR SUMMARY|test result"
