"""Speed side by side: named recipes against the HF default on the embedded model, interleaved
round by round in one run (drift on the machine hits every recipe alike), each in its own process
with autotune's full measurement (repeat policy, quality through the served path, MBU).

    python benchmarks/speed.py [--rounds 2] [--workload chat|summarize|code-edit] [--only NAME,...]
                               [--recipe NAME=plugin.option=value,plugin.option=value ...] [--max-batch N]

Every recipe is measured over the serving envelope (default: max_context 2048, capped by the model):
the typical call, a long prompt and one near max_context, as a search measures it. The table gives
the traffic mix's tokens/s and its ratio, and the geometric mean of the per-shape ratios.

Prints one JSON object per round and a table at the end (figures for RESULTS.md); the CPU is named
next to every figure, since ratios from different machines do not compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from autotune.evaluate import evaluate
from autotune.recipe import parse_sets, resolve
from autotune.registry import get_optimizations
from autotune.report_text import shape_ratio
from autotune.roofline import memory_bandwidth
from autotune.sources import resolve_model
from autotune.spec import MeasurePolicy
from autotune.target import current_target
from autotune.workload import Workload

#: the levers of a CPU host, as --set strings (the HF default is always measured first)
RECIPES = {
    "bf16": "dtype.dtype=bfloat16",
    "bf16+compile-forward": "dtype.dtype=bfloat16 compile.target=forward",
    "bf16+static+decode-loop": "dtype.dtype=bfloat16 cache.implementation=static compile.target=decode",
    "int8w+bf16+static+decode-loop": "quantization.method=torchao-int8-weight dtype.dtype=bfloat16 "
                                     "cache.implementation=static compile.target=decode",
    "int8dyn+bf16+static+decode-loop": "quantization.method=torchao-int8-dynamic dtype.dtype=bfloat16 "
                                       "cache.implementation=static compile.target=decode",
    "int4w+bf16+static+decode-loop": "quantization.method=torchao-int4-weight dtype.dtype=bfloat16 "
                                     "cache.implementation=static compile.target=decode",
    "bf16+prompt-lookup": "dtype.dtype=bfloat16 decoding.method=prompt-lookup",
    "int8w+bf16+static+aoti": "quantization.method=torchao-int8-weight dtype.dtype=bfloat16 "
                              "cache.implementation=static compile.target=aoti",
    "int4w-g32+int8-head+bf16+static+decode-loop": "quantization.method=torchao-int4-weight "
                                                  "quantization.group_size=32 quantization.head=int8 "
                                                  "dtype.dtype=bfloat16 cache.implementation=static "
                                                  "compile.target=decode",
}


def parse_recipe(text: str, optimizations) -> dict:
    """``plugin.option=value ...`` as a resolved recipe; a bad one exits with one line, no traceback."""
    from autotune.errors import AutotuneError

    try:
        return resolve(parse_sets(text.split(), optimizations), optimizations)
    except AutotuneError as exc:
        raise SystemExit(f"error: recipe {text!r}: {exc}") from None


def named_recipes(args: list[str]) -> dict[str, str]:
    """``NAME=SETS`` arguments by name; one without a name exits with one line."""
    bad = [a for a in args if "=" not in a or not a.split("=", 1)[0].strip()]
    if bad:
        raise SystemExit(f"error: {bad[0]!r} is not NAME=plugin.option=value ...")
    return dict(a.split("=", 1) for a in args)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workload", default="chat")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-context", type=int, default=None, help="the envelope (default 2048, capped by the model)")
    ap.add_argument("--only", default="", help="comma-separated names of RECIPES to measure")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=SETS",
                    help="an extra recipe: name=space-separated plugin.option=value")
    ap.add_argument("--max-batch", type=int, default=None, help="the envelope's widest call (default 1)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="benchmarks/last-speed.json")
    args = ap.parse_args()

    optimizations, target = get_optimizations(), current_target()
    source = resolve_model("smollm2-135m")
    given = {"kind": args.workload, "new_tokens": args.new_tokens}
    if args.max_context:
        given["max_context"] = args.max_context
    if args.max_batch:
        given["max_batch"] = args.max_batch
    workload = Workload.from_dict(given).for_model(source.info())
    chosen = {k: v for k, v in RECIPES.items() if not args.only or k in args.only.split(",")}
    chosen.update(named_recipes(args.recipe))
    recipes = {"hf-default": resolve({}, optimizations)}
    recipes.update({name: parse_recipe(sets, optimizations) for name, sets in chosen.items()})
    policy = MeasurePolicy()
    bandwidth = memory_bandwidth(target.device, target.hardware_key)
    print(f"# {target.describe()}; flags {' '.join(target.cpu_flags)}; read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"{workload.describe()}", flush=True)

    runs: dict[str, list] = {name: [] for name in recipes}
    for round_ in range(args.rounds):
        base = None
        for name, recipe in recipes.items():
            ev = evaluate(source, recipe, workload, target, optimizations, baseline=base, timeout=args.timeout,
                          policy=policy)
            if name == "hf-default":
                base = ev
            f = ev.figures
            row = {"round": round_, "recipe": name, "status": str(ev.status), "error": ev.error,
                   "tokens_per_s": f.tokens_per_s, "tpot_ms_p50": f.tpot_ms_p50, "mbu": f.mbu,
                   "quality": f.quality, "greedy_match": f.greedy_match, "cv": f.cv,
                   "peak_memory_mib": f.peak_memory_bytes and f.peak_memory_bytes / 2**20,
                   "tokens_per_step": f.tokens_per_step, "compile_s": f.compile_s, "wall_s": f.wall_s,
                   "kld": f.kld, "ttft_ms_p50": f.ttft_ms_p50, "steady_compiles": f.steady_compiles,
                   "per_shape_ratio": shape_ratio(f.shown(), base.figures.shown()) if base and ev.ok else None,
                   "shapes": f.shapes}
            runs[name].append(row)
            print(json.dumps(row), flush=True)

    table = summarize(runs)
    print(f"\n{target.describe()}; {workload.describe()}; median of {args.rounds} interleaved rounds")
    print(f"{'recipe':44} {'tok/s':>7} {'x HF':>6} {'x shape':>7} {'TPOT ms':>8} {'TTFT ms':>8} {'MBU':>6} "
          f"{'quality':>8} {'KLD':>7} {'peak MiB':>9}")
    for name, r in table.items():
        print(f"{name:44} {fmt(r['tokens_per_s'], 7, 1)} {fmt(r['ratio'], 6, 2)} {fmt(r['per_shape_ratio'], 7, 2)} "
              f"{fmt(r['tpot_ms_p50'], 8, 1)} {fmt(r['ttft_ms_p50'], 8, 0)} {fmt(r['mbu'], 6, 3)} "
              f"{fmt(r['quality'], 8, 3)} {fmt(r['kld'], 7, 4)} {fmt(r['peak_memory_mib'], 9, 0)} "
              f"{r['status'] if r['status'] != 'ok' else ''}")
    Path(args.out).write_text(json.dumps({"target": target.to_dict(), "bandwidth_bytes_s": bandwidth,
                                          "workload": workload.describe(), "runs": runs, "table": table}, indent=2))
    return 0


def summarize(runs: dict) -> dict:
    def med(rows, key):
        values = [r[key] for r in rows if r["status"] == "ok" and r[key] is not None]
        return statistics.median(values) if values else None

    base = med(runs["hf-default"], "tokens_per_s")
    out = {}
    for name, rows in runs.items():
        speed = med(rows, "tokens_per_s")
        out[name] = {k: med(rows, k) for k in ("tokens_per_s", "tpot_ms_p50", "ttft_ms_p50", "mbu", "quality",
                                               "greedy_match", "kld", "peak_memory_mib", "tokens_per_step",
                                               "per_shape_ratio")}
        out[name]["ratio"] = speed / base if speed and base else None
        out[name]["status"] = ",".join(sorted({r["status"] for r in rows}))
    return out


def fmt(value, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


if __name__ == "__main__":
    sys.exit(main())
