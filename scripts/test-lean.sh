#!/usr/bin/env bash
# The core built without its `structured` feature, as an app that leaves structured output out of
# its mobile library builds it: it compiles, and (SmolLM2 through real llama.cpp) JSON-schema,
# JSON-object and forced tool-call requests are refused with an error naming the feature, while
# text and tools under `auto` still answer (core/tests/integration/lean.rs). On x86-64 Linux it
# builds llama.cpp with the same CPU variants as the workspace. Cargo still builds llama.cpp a
# second time on a cold target: this graph's build-script dependencies have other features than
# the workspace's, which changes llama-cpp-sys-2's fingerprint (about 6 minutes of a cold CI run;
# warm runs reuse it).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
features=uniffi
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then features=uniffi,cpu-variants; fi
out=$(cargo test --release -p edgecascade --no-default-features --features "$features" \
  --test integration lean 2>&1)
rc=$?
# Cargo's own result lines are renamed, so the suite's figures are counted once, as `lean`.
echo "$out" | sed 's/^test result: /lean: /'
passed=$(echo "$out" | awk '/^test result:/ { p += $4 } END { print p + 0 }')
failed=$(echo "$out" | awk '/^test result:/ { f += $6 } END { print f + 0 }')
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "test result: lean. $passed passed; $failed failed; (the core without structured output)"
[ "$rc" = 0 ]
