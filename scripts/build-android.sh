#!/usr/bin/env bash
# Builds libedgecascade_ffi.so for Android (arm64-v8a first, and x86_64 for the emulator) into
# android/src/main/jniLibs with cargo-ndk, and generates the Kotlin bindings into the module.
# --platform equals the module's minSdk; the C++ runtime is linked statically (llama-cpp-2's
# android-static-stdcxx, on for Android in core/Cargo.toml); pages are 16 KB-aligned for
# Android 15+. Structured output (JSON schemas, forced tool calls) is built in unless
# EDGECASCADE_STRUCTURED=off (about 2.3 MB less; such requests are then refused).
# Needs an NDK (ANDROID_NDK_HOME). Not run on our CI: no NDK there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
min_sdk=${ANDROID_MIN_SDK:-26}
if [ -z "${ANDROID_NDK_HOME:-}" ] || [ ! -d "$ANDROID_NDK_HOME" ]; then
  echo "build-android: set ANDROID_NDK_HOME to an Android NDK (r27 or newer)" >&2
  exit 1
fi
command -v cargo-ndk >/dev/null || cargo install cargo-ndk --locked
rustup target add aarch64-linux-android x86_64-linux-android
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-z,max-page-size=16384"
features=structured
[ "${EDGECASCADE_STRUCTURED:-on}" = off ] && features=""
cargo ndk -t arm64-v8a -t x86_64 --platform "$min_sdk" -o android/src/main/jniLibs \
  build --profile release-mobile -p edgecascade-ffi --no-default-features ${features:+--features "$features"}
# The bindings come from a host build of the same library (library mode reads its metadata).
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -q -p edgecascade-ffi
rm -rf android/src/main/kotlin-generated
"$target/release/uniffi-bindgen" generate --library "$target/release/libedgecascade_ffi.so" \
  --language kotlin --out-dir android/src/main/kotlin-generated --no-format
ls -la android/src/main/jniLibs/*/libedgecascade_ffi.so
