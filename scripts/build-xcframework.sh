#!/usr/bin/env bash
# Builds ios/EdgeCascadeFFI.xcframework (static libedgecascade_ffi.a for iOS devices, and for the
# simulator on Apple silicon and Intel, Metal on) and generates the Swift bindings into
# ios/Sources/EdgeCascadeBindings. Needs a Mac with Xcode. Not run on our CI: no Swift
# toolchain or Xcode there (README); scripts/check-swift.sh checks what can be checked on Linux.
# Structured output (JSON schemas, forced tool calls) is built in unless EDGECASCADE_STRUCTURED=off
# (about 2.3 MB less; such requests are then refused).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "$(uname)" != Darwin ] || ! command -v xcodebuild >/dev/null; then
  echo "build-xcframework: needs macOS with Xcode (xcodebuild, lipo)" >&2
  exit 1
fi
target=${CARGO_TARGET_DIR:-$root/target}
export IPHONEOS_DEPLOYMENT_TARGET=${IPHONEOS_DEPLOYMENT_TARGET:-15.0} # = Package.swift
targets="aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios"
rustup target add $targets
features=metal,structured
[ "${EDGECASCADE_STRUCTURED:-on}" = off ] && features=metal
for t in $targets; do
  cargo build --profile release-mobile -p edgecascade-ffi --no-default-features --features "$features" --target "$t"
done
lib() { echo "$target/$1/release-mobile/libedgecascade_ffi.a"; }

# The Swift bindings, from a host build of the same library (library mode reads its metadata).
cargo build --release -q -p edgecascade-ffi
gen=$(mktemp -d)
"$target/release/uniffi-bindgen" generate --library "$target/release/libedgecascade_ffi.dylib" \
  --language swift --out-dir "$gen"
rm -rf ios/Sources/EdgeCascadeBindings
mkdir -p ios/Sources/EdgeCascadeBindings
cp "$gen"/*.swift ios/Sources/EdgeCascadeBindings/

# One header folder for both FFI modules the generated Swift imports.
headers=$(mktemp -d)
cp "$gen"/*.h "$headers"/
cat "$gen"/*.modulemap > "$headers/module.modulemap"

sim=$(mktemp -d)/libedgecascade_ffi.a
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$sim"
rm -rf ios/EdgeCascadeFFI.xcframework
xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers "$headers" \
  -library "$sim" -headers "$headers" \
  -output ios/EdgeCascadeFFI.xcframework
ls -la "$(lib aarch64-apple-ios)"
echo "ios/EdgeCascadeFFI.xcframework"
