#!/usr/bin/env bash
# The core built without its `structured` feature, as an app that leaves structured output out of
# its mobile library builds it: it compiles, and (SmolLM2 through real llama.cpp) JSON-schema,
# JSON-object and forced tool-call requests are refused with an error naming the feature, while
# text and tools under `auto` still answer (core/tests/integration/lean.rs). llama.cpp is not
# built a second time: on x86-64 Linux the core keeps the workspace's CPU variants, and the FFI
# crate (with its `bindgen` feature, still without `structured`) joins the build so that the
# build-script dependencies get the workspace's features (`memchr`'s `default`, through
# uniffi's CLI): otherwise llama-cpp-sys-2's fingerprint differs and a cold run builds it
# again (about 6 minutes). Checked with `cargo +nightly ... --unit-graph`: the closure of
# llama-cpp-sys-2 is the same as the workspace build's.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
features=edgecascade/uniffi,edgecascade-ffi/bindgen
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then features=$features,edgecascade/cpu-variants; fi
out=$(cargo test --release -p edgecascade -p edgecascade-ffi --no-default-features \
  --features "$features" --test integration lean 2>&1)
rc=$?
# Cargo's own result lines are renamed, so the suite's figures are counted once, as `lean`.
echo "$out" | sed 's/^test result: /lean: /'
passed=$(echo "$out" | awk '/^test result:/ { p += $4 } END { print p + 0 }')
failed=$(echo "$out" | awk '/^test result:/ { f += $6 } END { print f + 0 }')
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "test result: lean. $passed passed; $failed failed; (the core without structured output)"
[ "$rc" = 0 ]
