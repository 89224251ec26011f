# Sourced by demo.sh and test.sh. EDGECASCADE_NATIVE=1 builds llama.cpp and our code for this
# host's CPU (RUSTFLAGS=-Ctarget-cpu=native turns on GGML_NATIVE in llama-cpp-sys-2). AMX is
# disabled: ggml's AMX path segfaulted on a Xeon here. A native binary can die with SIGILL on
# another CPU, so it uses its own target dir and is for local source builds only.
if [ "${EDGECASCADE_NATIVE:-0}" = 1 ]; then
  export RUSTFLAGS="${RUSTFLAGS:-} -Ctarget-cpu=native"
  export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}-native"
fi
