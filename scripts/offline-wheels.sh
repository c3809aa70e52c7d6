#!/usr/bin/env bash
# Wheels for an offline CUDA host whose Python (3.12) already holds CUDA torch, numpy, pluggy, click,
# tokenizers, safetensors...: autotune itself and what it needs beyond that image, into .whl/ (ignored by
# git) — base/ always, hf/ a newer transformers with its own needs (tried first, dropped if it fails to
# import there). bitsandbytes keeps its CUDA 13 libraries only (43 MB -> 8 MB). benchmarks/gpu-run.sh
# installs them there and runs benchmarks/gpu.py. Usage: bash scripts/offline-wheels.sh [PYVER]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-3.12}
rm -rf .whl && mkdir -p .whl/base .whl/hf
get() {  # dir, then name==version...
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
v() { python3 -m pip show "$1" 2>/dev/null | awk '/^Version/{print $2}'; }
get .whl/base optuna=="$(v optuna)" sqlalchemy=="$(v sqlalchemy)" alembic=="$(v alembic)" mako=="$(v mako)" \
  colorlog=="$(v colorlog)" gguf=="$(v gguf)" platformdirs=="$(v platformdirs)" torchao=="$(v torchao)" \
  bitsandbytes=="$(v bitsandbytes)"
get .whl/hf transformers=="$(v transformers)" huggingface_hub=="$(v huggingface_hub)" kernels=="$(v kernels)" \
  httpx2 httpcore2 truststore idna=="$(v idna)" anyio=="$(v anyio)" h11=="$(v h11)" hf-xet=="$(v hf-xet)" \
  tomlkit click=="$(v click)"
for w in .whl/base/bitsandbytes-*.whl; do
  zip -q -d "$w" 'bitsandbytes/libbitsandbytes_cuda1[12]*' 'bitsandbytes/libbitsandbytes_rocm*' || true
done
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl/base .
rm -rf build
du -sh .whl
