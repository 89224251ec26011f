#!/usr/bin/env bash
# The generated Python bindings (UniFFI library mode) against the host library and SmolLM2.
# Prints a cargo-style "test result:" line so scripts/test.sh counts them in its closing total.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
# The workspace's build: the library the Rust tests built, with the same llama.cpp (a build
# of this crate alone would resolve other features and compile llama.cpp a second time).
cargo build --release -q --workspace
# A package (the generated modules import each other relatively), with the library beside them.
out=$target/python
pkg=$out/edgecascade_sdk
rm -rf "$out" && mkdir -p "$pkg"
"$target/release/uniffi-bindgen" generate --library "$target/release/libedgecascade_ffi.so" \
  --language python --out-dir "$pkg" >/dev/null
touch "$pkg/__init__.py"
cp "$target/release/libedgecascade_ffi.so" "$pkg/"
# With llama.cpp as shared libraries (the x86-64 Linux build, ADR 0006) they go beside it too:
# the library finds them through its $ORIGIN rpath, as a shipped package would.
for so in "$target"/release/libllama*.so "$target"/release/libggml*.so; do
  [ -e "$so" ] && cp "$so" "$pkg/"
done
log=$(mktemp)
set +e
PYTHONPATH="$out" python3 -m unittest -v bindings/tests/python/test_edgecascade.py 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
run=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$log" | tail -n 1)
bad=$(grep -cE '^(FAIL|ERROR):' "$log" || true)
run=${run:-0}
[ "$status" = 0 ] || [ "$bad" != 0 ] || bad=1
[ "$run" -ge "$bad" ] || run=$bad  # nothing ran (an import failed): one failure, not -1 passed
echo "test result: python. $((run - bad)) passed; $bad failed; (Python bindings)"
rm -f "$log"
exit "$status"
