#!/usr/bin/env bash
# The core built without its `structured` feature, as an app that leaves structured output out of
# its mobile library builds it: it compiles, and (SmolLM2 through real llama.cpp) JSON-schema,
# JSON-object and forced tool-call requests are refused with an error naming the feature, while
# text and tools under `auto` still answer (core/tests/lean.rs). llama.cpp is not
# built a second time: on x86-64 Linux the core keeps the workspace's CPU variants, and the FFI
# crate (with its `bindgen` feature) and the CLI crate join the selection, still without
# `structured`, so that every dependency gets the workspace's features (`memchr`'s `default`
# through uniffi's CLI, `libc`, `log`, `clap`... through the CLI's). Otherwise llama-cpp-sys-2's
# fingerprint differs and a cold run builds it again (about 6 minutes), and with the CLI left
# out `libc` and everything above it were built again (the lean step took 5 min 56 s cold on a
# slow 2-core VM, 4 min 31 s without them).
# Only the `lean` test target is built (core/tests/lean.rs): the CLI has none, so its binary is
# not built, nor is the whole integration suite.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
features=edgecascade/uniffi,edgecascade-ffi/bindgen
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then features=$features,edgecascade/cpu-variants; fi
out=$(cargo test --release -p edgecascade -p edgecascade-ffi -p edgecascade-cli --no-default-features \
  --features "$features" --test lean 2>&1)
rc=$?
# Cargo's own result lines are renamed, so the suite's figures are counted once, as `lean`.
echo "$out" | sed 's/^test result: /lean: /'
passed=$(echo "$out" | awk '/^test result:/ { p += $4 } END { print p + 0 }')
failed=$(echo "$out" | awk '/^test result:/ { f += $6 } END { print f + 0 }')
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "test result: lean. $passed passed; $failed failed; (the core without structured output)"
[ "$rc" = 0 ]
