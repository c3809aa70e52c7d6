#!/usr/bin/env bash
# One prepared run on an offline CUDA host: install the wheels scripts/offline-wheels.sh put in .whl/, then
# benchmarks/gpu.py on the SmolLM2 shape and the 7B shape, each under its own limit; every log and JSON
# lands in $OUT. Limits and recipes by environment: SMOL_S / SMOL_T / SMOL_R (the SmolLM2 phase's seconds,
# each trial's seconds, its --recipes), TOTAL_S (both phases), LLAMA_T / LLAMA_R. From the checkout's root:
#   SMOL_R="compiled decode loop,guide" bash benchmarks/gpu-run.sh
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
T0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; free -g | head -2; python3 -V; } > $OUT/env.txt 2>&1
python3 - <<'PY'
import glob, zipfile
for d, tgt in (("base", "/tmp/site"), ("hf", "/tmp/site-hf")):
    for w in sorted(glob.glob(f".whl/{d}/*.whl")):
        zipfile.ZipFile(w).extractall(tgt)
PY
if PYTHONPATH=/tmp/site-hf:/tmp/site python3 -c "import transformers; from transformers import StaticCache, AutoModelForCausalLM, LlamaConfig; print('transformers bundle', transformers.__version__)" >> $OUT/env.txt 2>&1; then
  export PYTHONPATH=/tmp/site-hf:/tmp/site
else
  export PYTHONPATH=/tmp/site; echo "transformers 5.25 bundle failed; the image's transformers" >> $OUT/env.txt
fi
R=$PWD; cd /tmp  # not the checkout: the trials' fork server must import the installed autotune (its plugins)
python3 -c "
import torch, transformers, optuna, sqlalchemy, torchao, autotune
from autotune.registry import get_optimizations
print('torch', torch.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__, 'torchao', torchao.__version__, 'autotune', autotune.__file__)
import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)
" >> "$OUT"/env.txt 2>&1
python3 -m autotune plugins > "$OUT"/plugins.txt 2>&1
echo "setup $(( $(date +%s)-T0 )) s" >> "$OUT"/env.txt
cat "$OUT"/env.txt
# a phase's trials are forked from its fork server: end both, and nothing else, before the next phase
cleanup() { pkill -9 -f "multiprocessing.forkserver" 2>/dev/null; sleep 2; nvidia-smi --query-gpu=memory.used --format=csv,noheader; }
for v in ${SMOL_S:-170} ${SMOL_T:-80} ${TOTAL_S:-460} ${LLAMA_T:-150}; do  # timeout 0 would mean no limit
  [ "$v" -gt 0 ] 2>/dev/null || { echo "limits must be whole seconds above 0, got $v"; exit 2; }
done
TORCH_LOGS=perf_hints timeout -k 5 ${SMOL_S:-170} python3 $R/benchmarks/gpu.py --only smollm2 --timeout ${SMOL_T:-80} \
  --recipes "${SMOL_R:-guide,compiled decode loop,AOTInductor,int4,bnb 4-bit,bf16 sdpa}" --out $OUT/smollm2.json > $OUT/smollm2.log 2>&1
echo "smollm2 rc=$? at $(( $(date +%s)-T0 )) s"; cleanup
grep -v "^W1\|^I1\|Warning\|warn" $OUT/smollm2.log | tail -40
LEFT=$(( ${TOTAL_S:-460} - ($(date +%s)-T0) ))
[ $LEFT -lt 30 ] && { echo "no time left for the 7B shape"; exit 0; }
TORCH_LOGS=perf_hints timeout -k 5 $LEFT python3 $R/benchmarks/gpu.py --only llama-7b-shape --timeout ${LLAMA_T:-150} \
  --recipes "${LLAMA_R:-guide,compiled decode loop,int4,bnb 4-bit,int8 weight}" --out $OUT/llama7b.json > $OUT/llama7b.log 2>&1
echo "llama rc=$? at $(( $(date +%s)-T0 )) s"; cleanup
grep -v "^W1\|^I1\|Warning\|warn" $OUT/llama7b.log | tail -40
grep -h -i "skipping cudagraphs\|cudagraph" $OUT/*.log | sort | uniq -c | head -20
