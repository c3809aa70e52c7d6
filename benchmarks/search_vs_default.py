"""Benchmarks on the embedded model (not timed tests; run by hand, report in RESULTS.md).

(a) Run a search with the default budget, then re-measure the winner and the HF default side by
    side in this same run (alternating, several rounds) and report the tokens/s ratio.
(b) Measure every recipe of a small grid once, then run TPE studies (several seeds) over the same
    space against the same database, where every configuration is reused from the grid instead of
    measured again, and report how many trials TPE needed to come within 3% of the grid's best.

    python benchmarks/search_vs_default.py [--db sqlite:///bench.db] [--trials 12] [--skip-grid]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from autotune.budget import parse_budget, parse_objectives
from autotune.evaluate import evaluate
from autotune.sources import resolve_model
from autotune.registry import get_optimizations
from autotune.recipe import describe, resolve
from autotune.tuner import Search, SearchSpec
from autotune.space import build_space, count
from autotune.store import Store
from autotune.target import current_target
from autotune.workload import Workload

GRID = {  # what matters on a CPU host, small enough to measure whole
    "quantization.method": ["none", "torchao-int8-weight"],
    "dtype.dtype": ["auto", "bfloat16"],
    "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"],
    "cache.implementation": ["dynamic", "static"], "cache.ladder": ["x2"],
    "compile.target": ["off", "forward", "decode"], "compile.mode": ["default"],
    "compile.freezing": [False], "compile.cpp_wrapper": [False], "compile.prefill": ["eager"], "compile.scope": ["model"],
    "quantization.head": ["keep"],
}


def side_by_side(source, recipes: dict, workload, target, optimizations, rounds: int = 3) -> dict:
    """Alternate the recipes round by round so drift on the machine hits both alike."""
    speeds = {name: [] for name in recipes}
    base = None
    for _ in range(rounds):
        for name, recipe in recipes.items():
            ev = evaluate(source, recipe, workload, target, optimizations, baseline=base)
            if name == "hf-default":
                base = ev
            if ev.ok:
                speeds[name].append(ev.get("tokens_per_s"))
    return {name: statistics.median(v) if v else None for name, v in speeds.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite:///bench.db")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--budget", default="memory<=2GiB,quality>=0.95")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--skip-search", action="store_true")
    args = ap.parse_args()

    store, optimizations, target = Store(args.db), get_optimizations(), current_target()
    source, workload = resolve_model("smollm2-135m"), Workload()
    out: dict = {"target": target.describe(), "workload": workload.describe()}

    if not args.skip_search:
        search_part(args, store, optimizations, target, source, workload, out)
    if not args.skip_grid:
        grid_part(args, store, optimizations, target, source, workload, out)
    Path("benchmarks/last-run.json").write_text(json.dumps(out, indent=2))


def search_part(args, store, optimizations, target, source, workload, out) -> None:
    spec = SearchSpec(source, workload, target, parse_budget(args.budget), parse_objectives("tpot", False),
                      trials=args.trials, study_name="bench-a", timeout=600, trial_timeout=240)
    result = Search(spec, store, optimizations).run()
    best = result.best[0]
    speeds = side_by_side(source, {"hf-default": resolve({}, optimizations), "found": best.recipe},
                          workload, target, optimizations)
    out["a"] = {"found": describe(best.recipe, optimizations), "tokens_per_s": speeds,
                "ratio": speeds["found"] / speeds["hf-default"] if all(speeds.values()) else None}
    print(json.dumps(out["a"], indent=2), flush=True)


def grid_part(args, store, optimizations, target, source, workload, out) -> None:
    space = build_space(optimizations, target, GRID)
    grid_spec = SearchSpec(source, workload, target, parse_budget(args.budget), parse_objectives("tpot", False),
                           trials=count(space), study_name="bench-grid", sampler="grid", restrict=GRID)
    grid = Search(grid_spec, store, optimizations).run()
    feasible = [r for r in grid.records if r.status == "ok" and r.feasible]
    best_tpot = min(r.result["tpot_ms_p50"] for r in feasible)
    needed = []
    for seed in range(args.seeds):
        tpe_spec = SearchSpec(source, workload, target, parse_budget(args.budget), parse_objectives("tpot", False),
                              trials=count(space), study_name=f"bench-tpe-{seed}", sampler="tpe", seed=seed,
                              restrict=GRID)
        tpe = Search(tpe_spec, store, optimizations).run()
        measured = [r for r in tpe.records if r.status != "invalid"]
        hit = next((i + 1 for i, r in enumerate(measured) if r.status == "ok" and r.feasible
                    and r.result["tpot_ms_p50"] <= best_tpot * 1.03), None)
        needed.append(hit)
    grid_n = len([r for r in grid.records if r.status != "invalid"])
    out["b"] = {"grid_recipes": count(space), "grid_measured": grid_n, "grid_best_tpot_ms": best_tpot,
                "grid_best": describe(min(feasible, key=lambda r: r.result["tpot_ms_p50"]).recipe, optimizations),
                "tpe_trials_to_3pct": needed,
                "median_share_of_grid": statistics.median(n / grid_n for n in needed if n) if any(needed) else None}
    print(json.dumps(out["b"], indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
