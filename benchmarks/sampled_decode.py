"""Sampled decode against every token (a benchmark, not a test; figures go to RESULTS.md): one eager
loser of the README job's envelope, screened on its envelope pass with its longer shapes' decode sampled
(autotune.trial.SAMPLED_DECODE_TOKENS), against the same recipe's measured rounds (every token), then
sampled again: each shape's end-to-end time, TTFT and TPOT, side by side in one run.

    python benchmarks/sampled_decode.py
"""
import json
from autotune.evaluate import evaluate
from autotune.figures import Figures
from autotune.recipe import resolve
from autotune.registry import get_optimizations
from autotune.sources import resolve_model
from autotune.spec import MeasurePolicy
from autotune.target import current_target
from autotune.workload import Workload

opts = get_optimizations()
src = resolve_model("smollm2-135m")
wl = Workload(max_context=2048)
target = current_target("cpu")
recipe = resolve({"attention": {"implementation": "eager"}}, opts)
leader = Figures(e2e_ms_p50=100.0, tpot_ms_p50=1.0, shapes=[{"prompt_tokens": p, "new_tokens": n, "e2e_ms_p50": 100.0}
                                                            for p, n in wl.shapes()])
policy = MeasurePolicy()
rows = {}
for label, inc in (("sampled", leader), ("whole", None), ("sampled again", leader)):
    ev = evaluate(src, recipe, wl, target, opts, incumbent=inc, policy=policy, timeout=600)
    f = ev.figures
    rows[label] = {"status": ev.status.value, "decode_sampled": f.decode_sampled, "runs": f.runs,
                   "envelope_pass_s": f.envelope_pass_s, "wall_s": f.wall_s,
                   "shapes": [(s["prompt_tokens"], round(s["e2e_ms_p50"]), round(s["ttft_ms_p50"]), round(s["tpot_ms_p50"], 1))
                              for s in f.shapes]}
    print(label, json.dumps(rows[label]), flush=True)
print(target.describe())
