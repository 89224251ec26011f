#!/usr/bin/env bash
# Checks that the portable confidence kernel (core/src/engine/local/kernel.rs, the code ARM
# phones run for every generated token) compiles to NEON vector code for aarch64: the file is
# compiled alone (it has no dependencies) to assembly for aarch64-linux-android, and its hot
# loops must use 4-lane vector min/max (the top-two pass) and fused multiply-adds (the exp
# pass), with no calls into libm per element. No NDK needed: rustc only emits assembly.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=aarch64-linux-android
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if ! rustup target add "$target" >/dev/null 2>&1; then
  echo "check-neon: SKIP: rustup cannot install $target"
  echo "test result: neon. 0 passed; 0 failed; (skipped)"
  exit 0
fi
{
  sed 's/pub(super)/pub/g' "$root/core/src/engine/local/kernel.rs"
  echo '#[no_mangle] pub fn stats_portable(l: &[f32]) -> (f32, f32, f32, f32) { let s = stats_impl(l); (s.max, s.log_z, s.entropy, s.margin) }'
} > "$out/kernel.rs"
rustc --edition 2021 --crate-type lib -C opt-level=3 --target "$target" --emit asm \
  -o "$out/kernel.s" "$out/kernel.rs" || { echo "test result: neon. 0 passed; 1 failed; (rustc failed)"; exit 1; }
body=$(awk '/^stats_portable:/,/\.cfi_endproc/' "$out/kernel.s")
count() { grep -cE "$1" <<<"$body" || true; }
passed=0 failed=0
check() { # what, count, minimum
  if [ "$2" -ge "$3" ]; then
    echo "check-neon: ok: $1 ($2)"; passed=$((passed + 1))
  else
    echo "check-neon: FAILED: $1 ($2, want at least $3)"; failed=$((failed + 1))
  fi
}
check "vector max/min in the top-two pass (fmaxnm/fminnm v.4s)" "$(count '\s(fmaxnm|fminnm)\s+v[0-9]+\.4s')" 4
check "fused multiply-adds in the exp pass (fmla v.4s)" "$(count '\sfmla\s+v[0-9]+\.4s')" 14
check "4-lane loads of logits (ldp/ldr q)" "$(count '\s(ldp|ldr)\s+q[0-9]+')" 2
calls=$(count '\sbl\s+(fmaf|expf|exp)')
if [ "$calls" = 0 ]; then
  echo "check-neon: ok: no libm call per element"; passed=$((passed + 1))
else
  echo "check-neon: FAILED: $calls libm calls"; failed=$((failed + 1))
fi
echo "check-neon: $(count '\sv[0-9]+\.4s') vector instructions, $(count '\[sp') stack accesses in stats_portable"
echo "test result: neon. $passed passed; $failed failed; (portable confidence kernel vectorises to NEON)"
[ "$failed" = 0 ]
