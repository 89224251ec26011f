#!/usr/bin/env bash
# The arm64 code, executed: cross-builds the desktop binary for aarch64-unknown-linux-gnu
# (Debian's cross toolchain) with llama.cpp's arm64 CPU variants (the baseline, dot product +
# FP16, i8mm + SVE; cmake/ggml-cpu-variants.cmake) and runs the real SmolLM2 under qemu-aarch64:
#   - run-time selection: an emulated Cortex-A53 (armv8.0) gets the baseline, a Cortex-A76
#     (armv8.2, dot product) the dot-product variant, qemu's `max` CPU the i8mm one;
#   - each variant forced in turn answers the greedy prompts exactly as this machine's x86-64
#     build does, with the same confidence (the portable kernel, NEON code on arm64);
# and reports one "test result: arm64." line like cargo's.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
passed=0 failed=0
result() { echo "test result: arm64. $passed passed; $failed failed; ($1)"; }

# What the cross build and the emulator need (Debian packages, and the Rust target).
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  pkgs="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q $pkgs >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q $pkgs >/dev/null; }
  else
    echo "test-arm64: needs: sudo apt-get install $pkgs"
    failed=1; result "cross toolchain missing"; exit 1
  fi
fi
rustup target add "$target" >/dev/null 2>&1 || { failed=1; result "rustup cannot add $target"; exit 1; }

export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=$sysroot"
# A native build's flags are for this x86-64 host, never for the cross build.
unset RUSTFLAGS CFLAGS CXXFLAGS
tdir=${CARGO_TARGET_DIR:-$root/target}
if ! cargo build --release --target "$target" -p edgecascade-cli --bin edgecascade; then
  failed=1; result "the cross build failed"; exit 1
fi
arm=$tdir/$target/release/edgecascade
host=$tdir/release/edgecascade
[ -x "$host" ] || cargo build --release -p edgecascade-cli --bin edgecascade || exit 1
models=${EDGECASCADE_MODELS:-$root/models}
model=$models/smollm2-135m-instruct-q4_1.gguf
[ -f "$model" ] || python3 scripts/fetch_models.py smollm2 >/dev/null || exit 1

# No config or ledger of the user's: a temporary home.
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
export HOME=$home XDG_DATA_HOME=$home EDGECASCADE_LEDGER=$home/ledger.jsonl
unset EDGECASCADE_CPU_VARIANT
cd "$home"
on_arm() { # qemu cpu, then the binary's arguments
  local cpu=$1
  shift
  qemu-aarch64 -L "$sysroot" -cpu "$cpu" "$arm" "$@"
}
check() { # description, command...
  local what=$1
  shift
  if out=$("$@" 2>&1); then
    echo "test-arm64: ok: $what"
    passed=$((passed + 1))
  else
    echo "test-arm64: FAILED: $what"
    echo "$out" | tail -5
    failed=$((failed + 1))
  fi
}

# Run-time selection by the emulated CPU's features.
picks() { # qemu cpu, expected variant
  local line
  # `models trial-load` is the load `models verify` runs in a child process (a child that
  # qemu-user, without binfmt, cannot start).
  line=$(on_arm "$1" models trial-load "$model" 2>&1) || { echo "$line"; return 1; }
  echo "$line"
  grep -q "CPU backend: $2[ ,]" <<<"$line"
}
check "a Cortex-A53 (armv8.0) runs the baseline variant" picks cortex-a53 armv8.0_1
check "a Cortex-A76 (armv8.2, dot product) runs the dot-product variant" picks cortex-a76 armv8.2_2
check "qemu's max CPU (i8mm, SVE) runs the i8mm variant" picks max armv8.6_1

# The same greedy answers and confidence as x86-64, from each variant. The first prompt's
# answer is confident; the second meets near-ties that already split x86-64's own variants
# (the baseline x64 and AVX-512 answer it differently): an arm64 answer must equal the answer
# of one of them, with that variant's confidence.
prompts=("What is the capital of France?" "Name three colours of the rainbow.")
answer() { # binary runner..., prompt last: prints text and mean logprob
  "$@" 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(json.dumps({"text": v["text"], "mean_logprob": v["confidence"]["mean_logprob"]}))'
}
x86_answers() { # prompt: one line per x86-64 variant this CPU runs (others are refused, skipped)
  local v
  for v in x64 haswell alderlake skylakex zen4; do
    EDGECASCADE_CPU_VARIANT=$v answer "$host" ask --model "$model" --json --max-tokens 24 "$1" || true
  done
}
same() { # variant, file of x86-64 answers, prompt
  local got
  [ -s "$2" ] || { echo "no x86-64 answer"; return 1; }
  got=$(EDGECASCADE_CPU_VARIANT=$1 answer on_arm max ask --model "$model" --json --max-tokens 24 "$3") || return 1
  echo "$1: $got"
  python3 - "$got" "$2" <<'PY'
import json, sys
got = json.loads(sys.argv[1])
want = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
match = [w for w in want if w["text"] == got["text"]]
assert match, "no x86-64 variant answers so: " + " | ".join(w["text"] for w in want)
assert abs(match[0]["mean_logprob"] - got["mean_logprob"]) < 0.02, "the confidence differs"
PY
}
for i in "${!prompts[@]}"; do
  x86_answers "${prompts[$i]}" > "$home/x86-$i.jsonl"
done
for v in armv8.0_1 armv8.2_2 armv8.6_1; do
  for i in "${!prompts[@]}"; do
    check "$v answers \"${prompts[$i]}\" as an x86-64 build does" same "$v" "$home/x86-$i.jsonl" "${prompts[$i]}"
  done
done
kernel=$(on_arm max models trial-load "$model" 2>&1 | sed -n 's/.*confidence kernel: \([^,]*\),.*/\1/p')
echo "test-arm64: the confidence kernel on arm64: ${kernel:-unknown}"
result "the aarch64 build under qemu-aarch64"
[ "$failed" = 0 ]
