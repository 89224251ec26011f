#!/usr/bin/env bash
# Builds the Kotlin SDK for the JVM: the native library (host build), the UniFFI bindings
# generated from it (library mode, into android/src/main/kotlin-generated, never edited), and
# the hand-written layer (android/src/main/kotlin), compiled into one jar. Prints the jar's
# path as its last line. Desktop Kotlin/Java apps use that jar with the host library beside it
# (-Djna.library.path=DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/kotlin-env.sh
target=${CARGO_TARGET_DIR:-$root/target}
# The workspace's build: the library the Rust tests built, with the same llama.cpp (a build
# of this crate alone would resolve other features and compile llama.cpp a second time).
cargo build --release -q --workspace
lib=$target/release/libedgecascade_ffi.so
gen=android/src/main/kotlin-generated
rm -rf "$gen"
"$target/release/uniffi-bindgen" generate --library "$lib" --language kotlin --out-dir "$gen" --no-format >&2
out=$target/kotlin
mkdir -p "$out"
jar=$out/edgecascade-jvm.jar
"$KOTLINC" -nowarn -jvm-target 17 -cp "$JNA_JAR:$COROUTINES_JAR" -d "$jar" \
  $(find "$gen" android/src/main/kotlin -name '*.kt' | sort) >&2
echo "native library: $lib" >&2
echo "$jar"
