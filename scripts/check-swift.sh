#!/usr/bin/env bash
# What can be checked of the Swift package without a Swift toolchain (none on our Linux CI):
# generates the Swift bindings from the host library (library mode, as scripts/build-xcframework.sh
# does on a Mac), then scripts/check_swift.py parses the hand-written SDK (tree-sitter-swift) and
# checks every generated name, call, initialiser label and listener method it uses against them.
# Then the mobile Rust targets: `cargo check` of the FFI crate where a toolchain for the target's
# C and C++ (llama.cpp, ring) exists, a clear skip where not. Prints a cargo-style
# "test result:" line for scripts/test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
venv=${EDGECASCADE_VENV:-$root/.cache/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import tree_sitter, tree_sitter_swift' 2>/dev/null ||
  "$venv/bin/pip" install -q tree-sitter==0.26.1 tree-sitter-swift==0.7.4
# The workspace's build: the library the Rust tests built, with the same llama.cpp (a build
# of this crate alone would resolve other features and compile llama.cpp a second time).
cargo build --release -q --workspace
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$target/release/uniffi-bindgen" generate --library "$target/release/libedgecascade_ffi.so" \
  --language swift --out-dir "$gen" --no-format >/dev/null
ls "$gen"/edgecascade.swift "$gen"/edgecascade_ffi.swift "$gen"/edgecascadeFFI.h "$gen"/edgecascade_ffiFFI.h >/dev/null
passed=0 failed=0
if "$venv/bin/python" scripts/check_swift.py "$gen" ios/Sources/EdgeCascade/*.swift; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

# Mobile targets. Installing the Rust target works here; compiling llama.cpp and ring for it
# needs the platform's C toolchain, which only an NDK or Xcode provides.
check_target() { # target, prerequisite test, what is missing, check command
  if ! eval "$2"; then
    echo "check-mobile: SKIP cargo check --target $1: $3"
    return
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$1"; then
    rustup target add "$1" >/dev/null 2>&1 || { echo "check-mobile: SKIP $1: rustup cannot install the target"; return; }
  fi
  if eval "$4"; then
    echo "check-mobile: ok $1"; passed=$((passed + 1))
  else
    echo "check-mobile: FAIL $1"; failed=$((failed + 1))
  fi
}
check_target aarch64-linux-android '[ -n "${ANDROID_NDK_HOME:-}" ] && command -v cargo-ndk >/dev/null' \
  "no Android NDK (set ANDROID_NDK_HOME and install cargo-ndk)" \
  'cargo ndk -t arm64-v8a --platform 26 check -q -p edgecascade-ffi --no-default-features --features structured' 
check_target aarch64-apple-ios '[ "$(uname)" = Darwin ] && command -v xcrun >/dev/null' \
  "not on macOS with Xcode (the iOS SDK's clang builds llama.cpp)" \
  'cargo check -q -p edgecascade-ffi --no-default-features --features metal,structured --target aarch64-apple-ios' 
echo "test result: swift. $passed passed; $failed failed; (Swift SDK checked against generated bindings; mobile targets)"
[ "$failed" = 0 ]
