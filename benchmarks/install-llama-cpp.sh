#!/usr/bin/env bash
# llama-cpp-python built from source for the side-by-side benchmark (benchmarks/vs_llama_cpp.py), with
# this CPU's instruction sets named explicitly: a GGML_NATIVE build segfaulted on one of the machines
# autotune is measured on. Not needed by autotune itself or its tests (several minutes on 2 cores).
set -euo pipefail
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
args="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)"
args="$args -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)"
args="$args -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX_VNNI=$(has avx_vnni)"
# AMX off unless asked for (LLAMA_AMX=1): on an AMX Xeon (2026-12-01) ggml's AMX matmul died of SIGILL
# on its first tile instruction (tilezero in an OpenMP worker, no tile configuration there)
if [[ "${LLAMA_AMX:-0}" == 1 ]]; then
  args="$args -DGGML_AMX_TILE=$(has amx_tile) -DGGML_AMX_INT8=$(has amx_int8) -DGGML_AMX_BF16=$(has amx_bf16)"
else
  args="$args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
args="$args -DGGML_OPENMP=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
echo "CMAKE_ARGS=$args"
CMAKE_ARGS="$args" python3 -m pip install -q --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==0.3.36"
python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
