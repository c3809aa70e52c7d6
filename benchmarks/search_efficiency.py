"""Search efficiency: how many trials autotune's search (TPE with refinements of the leader), TPE
alone and random search need to come within 5% of the best recipe of a fully measured grid (a
benchmark, not a test; figures go to RESULTS.md).

1. Measure every recipe of a CPU space once, with the repeat policy, through the real search (grid
   sampler) into a tuning database — or reuse what the database already holds for it.
2. Replay: for each strategy and seed, an Optuna study over the same space whose objective is the
   stored measurement of the proposed recipe (what a real search would have measured: an ok one
   told as the search tells it (``autotune.study.tell``): an ok one with its budget constraints, a
   pruned one with its partial figure, a failed one as pruned with nothing measured).
   Rule-pruned proposals do not count; no seed recipes are enqueued, so the strategies alone are
   compared.

    python benchmarks/search_efficiency.py [--db sqlite:///bench.db] [--seeds 10] [--within 0.05]

``--table efficiency-cpu.json`` replays a grid measured before (its saved table: each recipe's status,
TPOT and quality) instead of measuring one: the strategies of today's code against yesterday's
figures, in a minute. A pruned recipe's partial figure is not in the table: it is told pruned
without one (a search would have told TPE its partial TPOT).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import optuna

from autotune.budget import parse_budget, parse_objectives
from autotune.figures import Figures
from autotune.states import Status
from autotune.recipe import describe, impossible, recipe_key, resolve
from autotune.registry import get_optimizations
from autotune.proposals import make_sampler, refinement
from autotune import study as protocol
from autotune.tuner import Search
from autotune.sources import resolve_model
from autotune.space import build_space, count, suggest
from autotune.spec import SearchSpec
from autotune.store import Store
from autotune.target import current_target
from autotune.workload import Workload

GRID = {  # the levers that matter on a CPU host, small enough to measure whole
    "quantization.method": ["none", "torchao-int8-weight"],
    "dtype.dtype": ["auto", "bfloat16"],
    "attention.implementation": ["sdpa", "eager"], "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"],
    "cache.implementation": ["dynamic", "static"], "cache.ladder": ["x2"],
    "compile.target": ["off", "forward", "decode"], "compile.mode": ["default"],
    "compile.freezing": [False], "compile.cpp_wrapper": [False], "compile.prefill": ["eager"], "compile.scope": ["model"],
    "quantization.head": ["keep"],
    "runtime.threads": ["auto"], "decoding.method": ["greedy"],
}


#: strategy -> (Optuna sampler, whether refinements of the leader take every other proposal)
STRATEGIES = {"autotune": ("tpe", True), "tpe": ("tpe", False), "random": ("random", False)}


def measure_grid(store, spec: SearchSpec, optimizations) -> dict[str, tuple[Status, Figures]]:
    """Every recipe of the space measured once (or reused): recipe key -> (status, figures)."""
    search = Search(spec, store, optimizations)
    result_records = []
    try:
        search.run()
    except Exception as exc:  # a grid where nothing fits is still a grid
        print(f"grid: {exc}", file=sys.stderr)
    study = search.open_study()
    result_records = search.study_records(study)
    return {recipe_key(r.recipe): (r.status, r.figures) for r in result_records}


def table_from_saved(path: Path, space, optimizations, target) -> dict[str, tuple[Status, Figures]]:
    """A saved grid table (``grid_table`` of a ``--table`` JSON) keyed by today's recipe keys: each row's
    recipe is named by the choices it differs in from the defaults, matched against the grid's points
    on the options that vary in :data:`GRID` (the pinned ones name no difference between points)."""
    import itertools

    varying = [k for k, values in GRID.items() if len(values) > 1]
    points = {}
    for values in itertools.product(*(GRID[k] for k in varying)):
        choice = dict(zip(varying, values))
        partial: dict = {}
        for k, v in {**{k: vs[0] for k, vs in GRID.items()}, **choice}.items():
            plugin, option = k.split(".")
            partial.setdefault(plugin, {})[option] = v
        recipe = resolve(partial, optimizations)
        if impossible(recipe, optimizations, target):
            continue
        named = frozenset(f"{k}={v}" for k, v in choice.items() if v != GRID[k][0])
        points[named] = recipe_key(recipe)
    table, unmatched = {}, []
    for row in json.loads(path.read_text())["grid_table"]:
        named = frozenset() if row["recipe"] == "HF default" else frozenset(
            p for p in row["recipe"].split(", ") if p.split("=")[0] in varying)
        if named not in points:
            unmatched.append(row["recipe"])
            continue
        figures = Figures(tpot_ms_p50=row.get("tpot_ms_p50"), quality=row.get("quality"), peak_memory_bytes=0)
        table[points[named]] = (Status(row["status"]), figures)
    if unmatched:
        print(f"{len(unmatched)} saved rows match no point of today's grid: {unmatched}", file=sys.stderr)
    return table


def replay(space, optimizations, target, table: dict, budget, strategy: str, seed: int, goal: float,
           key: str, limit: int) -> int | None:
    """Distinct recipes measured (rule-pruned proposals and repeats of a measured recipe not counted)
    until a feasible recipe within the goal is found; None if the strategy never gets there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, refined = STRATEGIES[strategy]
    study = optuna.create_study(direction="minimize", sampler=make_sampler(sampler, seed, space))
    seen: set[str] = set()
    for _ in range(limit * 20):
        params = refinement(study, space, optimizations, target, seed) if refined else None
        if params is not None:  # as Search.ask does
            study.enqueue_trial(params, user_attrs={"proposed_by": "refinement"})
        trial = study.ask()
        recipe = resolve(suggest(trial, space), optimizations)
        if impossible(recipe, optimizations, target):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        key_ = recipe_key(recipe)
        if key_ not in seen:  # a configuration proposed again is reused by a real search: it costs nothing
            seen.add(key_)
        status, figures = table.get(key_, (Status.ERROR, Figures()))
        # told as a search tells it (autotune.study.tell): budget constraints, a failure as pruned
        protocol.tell(study, trial, status, figures, budget.violations(figures) if status == Status.OK else {},
                      [(key, "minimize")])
        if status == Status.OK and budget.feasible(figures) and figures.get(key) <= goal:
            return len(seen)
        if len(seen) >= limit:
            return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite:///bench.db")
    ap.add_argument("--budget", default="memory<=2GiB,quality>=0.95")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--within", type=float, default=0.05)
    ap.add_argument("--study", default="bench-grid", help="the grid's study (another name measures the grid again, "
                                                          "reusing the database's successes)")
    ap.add_argument("--table", type=Path, default=None,
                    help="replay a saved grid (a JSON this benchmark wrote) instead of measuring one")
    args = ap.parse_args()

    optimizations, target = get_optimizations(), current_target()
    source, workload = resolve_model("smollm2-135m"), Workload()
    budget, objectives = parse_budget(args.budget), parse_objectives("tpot", False)
    space = build_space(optimizations, target, GRID, source.info())
    if args.table:
        saved = json.loads(args.table.read_text())
        table = table_from_saved(args.table, space, optimizations, target)
    else:
        spec = SearchSpec(source, workload, target, budget, objectives, trials=count(space), study_name=args.study,
                          sampler="grid", restrict=GRID, trial_timeout=600)
        table = measure_grid(Store(args.db), spec, optimizations)
    key = objectives[0][0]
    feasible = {k: f for k, (status, f) in table.items() if status == Status.OK and budget.feasible(f)}
    best_key = min(feasible, key=lambda k: feasible[k].get(key))
    goal = feasible[best_key].get(key) * (1 + args.within)
    n_valid = sum(1 for status, _ in table.values() if status != Status.INVALID)  # what a grid measures
    out = {"target": saved["target"] if args.table else target.describe(),
           "workload": saved["workload"] if args.table else workload.describe(),
           "replayed": f"{args.table} (replayed on {target.describe()})" if args.table else None,
           "grid_recipes": count(space),
           "grid_measured": n_valid, "grid_feasible": len(feasible),
           "grid_best": describe(json.loads(best_key), optimizations), "grid_best_tpot_ms": feasible[best_key].get(key),
           "within": args.within, "goal_tpot_ms": goal}
    out["grid_table"] = sorted(({"recipe": describe(json.loads(k), optimizations), "status": status.value,
                                 key: f.get(key), "quality": f.get("quality"), "feasible": k in feasible}
                                for k, (status, f) in table.items() if status != Status.INVALID),
                               key=lambda row: (row["status"] != "ok", row[key] or 1e9))
    for strategy in STRATEGIES:
        needed = [replay(space, optimizations, target, table, budget, strategy, seed, goal, key, n_valid)
                  for seed in range(args.seeds)]
        found = [n for n in needed if n is not None]
        out[strategy] = {"trials_needed": needed,
                        "median": statistics.median(found) if found else None,
                        "median_share_of_grid": statistics.median(found) / n_valid if found else None}
    print(json.dumps({k: v for k, v in out.items() if k != "grid_table"}, indent=2))
    Path("benchmarks/last-replay.json" if args.table else "benchmarks/last-efficiency.json").write_text(
        json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
