#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (the serving peer of bench/serve_load.py) into build/llama-server/.
#
# The llama.cpp tree comes from the llama-cpp-python source distribution (it vendors the whole of llama.cpp), so only
# the Python package registry is needed. CPU-only Release build, no libcurl; about 6 minutes on 2 cores.
# Idempotent: does nothing when build/llama-server/llama-server already exists. Prints the binary's path last.
#
# Usage: bench/build_llama_server.sh            (from anywhere; paths are relative to the repository root)
# Env:   PIP (default .venv/bin/pip), JOBS (default 2), LLAMA_CPP_PYTHON_VERSION (default: newest sdist)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/llama-server"
BIN="$OUT/llama-server"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
JOBS="${JOBS:-2}"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$OUT/src"
cd "$OUT/src"

spec="llama-cpp-python"
[[ -n "${LLAMA_CPP_PYTHON_VERSION:-}" ]] && spec="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
sdist="$(ls llama_cpp_python-*.tar.gz 2>/dev/null | head -n1 || true)"
if [[ -z "$sdist" ]]; then
    echo "downloading the $spec source distribution ..." >&2
    "$PIP" download --no-deps --no-binary :all: --dest . "$spec" >&2
    sdist="$(ls llama_cpp_python-*.tar.gz | head -n1)"
fi
tree="${sdist%.tar.gz}"
if [[ ! -d "$tree" ]]; then
    tar -xzf "$sdist"
fi

cd "$tree/vendor/llama.cpp"
echo "configuring llama.cpp in $PWD ..." >&2
# Not -march=native (the Makefile's llama-cpp-python build does the same): on CPUs whose flags list AMX, a native
# build uses instructions the VM has not enabled; a llama-server built so on 2026-12-07 died at model load (SIGSEGV).
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON >&2
echo "building llama-server with -j$JOBS (about 6 minutes on 2 cores) ..." >&2
cmake --build build --target llama-server -j"$JOBS" >&2

# The default build links llama.cpp's own libraries dynamically (BUILD_SHARED_LIBS=ON) with an rpath into the build
# tree, so the binary is left where it was built and reached through a symlink.
built="$PWD/build/bin/llama-server"
[[ -x "$built" ]] || { echo "error: the build finished but $built is missing" >&2; exit 1; }
ln -sf "$built" "$BIN"
"$BIN" --version >&2 2>&1 || true
echo "$BIN"
