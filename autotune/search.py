"""The search: an Optuna study over the plugins' space for this target, against the budget.

Every candidate is checked against the plugin rules (an impossible one is pruned and recorded),
looked up in the tuning database (a configuration already measured on this target is reused, not
measured again), or measured in isolation; every outcome is stored. The HF default and the
Transformers guide's recipe (and :data:`SEEDS`) are enqueued first so the result is never worse
than the guide."""
from __future__ import annotations

import hashlib
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import optuna

from . import space as spaces
from .budget import Budget, format_value
from .errors import NoFeasibleRecipe, UsageError
from .evaluate import DEFAULT_TRIAL_TIMEOUT, Evaluation, evaluate, score_quality
from .models import ModelSource
from .optimization import Optimization
from .recipe import describe, impossible, resolve
from .store import Store
from .store import models as m
from .workload import Workload

#: the Transformers guide's static-cache recipe as the guide writes it: bf16 weights, a static cache,
#: the forward pass compiled with reduce-overhead and fullgraph
GUIDE_RECIPE = {"dtype": {"dtype": "bfloat16"}, "cache": {"implementation": "static"},
                "compile": {"target": "forward", "mode": "reduce-overhead", "fullgraph": True}}
#: asked first, in this order: the HF default, the guide's recipe, and the guide plus torchao
#: weight-only int8 (the best recipe measured by hand on a Xeon CPU: 1.7x)
SEEDS = ({}, GUIDE_RECIPE,
         {**GUIDE_RECIPE, "quantization": {"method": "torchao-int8-weight"},
          "compile": {"target": "forward", "mode": "default"}})
SAMPLERS = ("tpe", "grid", "nsga2", "random")


@dataclass
class SearchSpec:
    source: ModelSource
    workload: Workload
    target: Any
    budget: Budget
    objectives: list[tuple[str, str]]  # (result key, direction)
    trials: int = 20
    timeout: float | None = None  # whole search, seconds
    trial_timeout: float = DEFAULT_TRIAL_TIMEOUT
    study_name: str | None = None
    sampler: str = "tpe"
    seed: int | None = 0
    restrict: dict = field(default_factory=dict)  # {"plugin.option": [choices]}
    measure_opts: dict = field(default_factory=dict)

    def default_study_name(self) -> str:
        raw = json.dumps([self.budget.text, self.objectives, self.workload.key, self.restrict, self.sampler],
                         sort_keys=True, default=str)
        return f"{self.source.name}@{self.target.hardware_key[:8]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


@dataclass
class TrialRecord:
    number: int
    measurement_id: int
    recipe: dict
    status: str
    result: dict
    error: str | None
    reused: bool
    feasible: bool


@dataclass
class SearchResult:
    study_name: str
    records: list[TrialRecord]
    best: list[TrialRecord]  # one, or the Pareto front
    baseline: TrialRecord | None
    interrupted: bool = False


class _StopFlag:
    """First Ctrl-C: finish the current trial, then stop. Second: stop now."""

    def __init__(self):
        self.stop = False

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


def make_sampler(name: str, seed, space):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {f"{p}.{o.name}": list(o.choices) for p, opts in space.items() for o in opts if len(o.choices) > 1}
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise UsageError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


class Search:
    """One search run; the per-trial step is reusable by the daemon (several workers, one study)."""

    def __init__(self, spec: SearchSpec, store: Store, optimizations: Mapping[str, Optimization]):
        self.spec, self.store, self.optimizations = spec, store, optimizations
        self.space = spaces.build_space(optimizations, spec.target, spec.restrict)
        self.study_name = spec.study_name or spec.default_study_name()
        self.baseline_recipe = resolve({}, optimizations)
        with store.session() as s:
            self.model_id = m.Model.get_or_create(s, spec.source.name, spec.source.config_only).id
            self.target_id = m.Target.get_or_create(s, spec.target).id
            self.workload_id = m.Workload.get_or_create(s, spec.workload).id

    # -- the study ---------------------------------------------------------------------------
    def open_study(self, storage=None) -> optuna.Study:
        """Create or resume the study (``storage``: e.g. one with heartbeats, for the daemon)."""
        directions = [d for _, d in self.spec.objectives]
        sampler = make_sampler(self.spec.sampler, self.spec.seed, self.space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=self.study_name, storage=storage or self.store.optuna_storage(),
                                    directions=directions, sampler=sampler, load_if_exists=True)
        if study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions]:
            raise UsageError(f"study {self.study_name!r} exists with other objectives; pick another --study name")
        with self.store.session() as s:
            row = s.query(m.Study).filter_by(name=self.study_name).one_or_none()
            if row is None:
                s.add(m.Study(name=self.study_name, model_id=self.model_id, target_id=self.target_id,
                              workload_id=self.workload_id, budget=self.spec.budget.text,
                              objective=",".join(f"{k}:{d}" for k, d in self.spec.objectives)))
        return study

    # -- one trial ---------------------------------------------------------------------------
    def ask(self, study: optuna.Study) -> optuna.Trial:
        """The next trial: a waiting one first (e.g. the retry of a trial whose worker died), else
        the next seed recipe not yet tried, else whatever the sampler proposes. Seeds are enqueued
        one at a time, just before they are asked, so they never starve a retry."""
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting and self.spec.sampler != "grid":  # a grid visits everything anyway
            done = study.user_attrs.get("seeds_asked", 0)
            seeds = [r for r in (resolve(p, self.optimizations) for p in SEEDS)
                     if impossible(r, self.optimizations, self.spec.target) is None]
            if done < len(seeds):
                study.set_user_attr("seeds_asked", done + 1)
                study.enqueue_trial(spaces.params_for(seeds[done], self.space))
        return study.ask()

    def baseline(self, on_status: Callable[[str], None] = lambda s: None) -> Evaluation:
        """The HF-default measurement on this target and workload (measured once, then reused)."""
        record = self.measure_or_reuse(self.baseline_recipe, on_status, is_baseline=True)
        return Evaluation(record.recipe, record.status, record.result, record.error)

    def measure_or_reuse(self, recipe: dict, on_status=lambda s: None, is_baseline: bool = False,
                         baseline: Evaluation | None = None, number: int = -1) -> TrialRecord:
        with self.store.session() as s:
            recipe_row = m.Recipe.get_or_create(s, recipe)
            model, target, workload = (s.get(m.Model, self.model_id), s.get(m.Target, self.target_id),
                                       s.get(m.Workload, self.workload_id))
            same = m.Measurement.find_same(s, model, target, workload, recipe_row)
            if same is not None:
                return self._record(number, same, recipe, reused=True)
            recipe_id = recipe_row.id
        on_status(describe(recipe, self.optimizations))
        ev = evaluate(self.spec.source, recipe, self.spec.workload, self.spec.target, self.optimizations,
                      baseline=baseline, timeout=self.spec.trial_timeout, measure_opts=self.spec.measure_opts)
        with self.store.session() as s:
            row = m.Measurement(model_id=self.model_id, target_id=self.target_id, workload_id=self.workload_id,
                                recipe_id=recipe_id, study=self.study_name, is_baseline=is_baseline,
                                status=ev.status, error=ev.error, figures=ev.result,
                                tpot_ms_p50=ev.get("tpot_ms_p50"), ttft_ms_p50=ev.get("ttft_ms_p50"),
                                tokens_per_s=ev.get("tokens_per_s"), peak_memory_bytes=ev.get("peak_memory_bytes"),
                                quality=ev.get("quality"))
            s.add(row)
            s.flush()
            return self._record(number, row, recipe, reused=False)

    @staticmethod
    def _record(number: int, row: m.Measurement, recipe: dict, reused: bool) -> TrialRecord:
        return TrialRecord(number, row.id, recipe, row.status, dict(row.figures or {}), row.error, reused, False)

    def run_trial(self, study: optuna.Study, baseline: Evaluation, on_status=lambda s: None,
                  trial: optuna.Trial | None = None) -> TrialRecord:
        """Ask (unless given an asked trial), check the rules, measure or reuse, store, tell."""
        trial = trial or self.ask(study)
        try:
            recipe = resolve(spaces.suggest(trial, self.space), self.optimizations)
            reason = impossible(recipe, self.optimizations, self.spec.target)
            if reason:
                record = self._record_invalid(trial.number, recipe, reason)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return record
            record = self.measure_or_reuse(recipe, on_status, baseline=baseline, number=trial.number)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr("measurement_id", record.measurement_id)
        trial.set_user_attr("recipe", describe(recipe, self.optimizations))
        if record.status != "ok":
            trial.set_user_attr("failure", f"{record.status}: {record.error}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return record
        values = [record.result[key] for key, _ in self.spec.objectives]
        violations = self.violations(record.result)
        for name, v in violations.items():
            trial.set_constraint(name, v)
        record.feasible = all(v <= 0 for v in violations.values())
        study.tell(trial, values)
        return record

    def _record_invalid(self, number: int, recipe: dict, reason: str) -> TrialRecord:
        with self.store.session() as s:
            recipe_row = m.Recipe.get_or_create(s, recipe)
            row = m.Measurement(model_id=self.model_id, target_id=self.target_id, workload_id=self.workload_id,
                                recipe_id=recipe_row.id, study=self.study_name, is_baseline=False,
                                status="invalid", error=reason, figures={})
            s.add(row)
            s.flush()
            return TrialRecord(number, row.id, recipe, "invalid", {}, reason, False, False)

    def violations(self, result: dict) -> dict[str, float]:
        out = {}
        for limit in self.spec.budget.limits:
            if limit.key == "quality" and self.spec.source.config_only:
                continue  # random weights: quality is meaningless
            v = limit.violation(result)
            out[str(limit)] = v if v is not None else 1.0
        return out

    # -- the whole run -----------------------------------------------------------------------
    def run(self, progress=None) -> SearchResult:
        study = self.open_study()
        deadline = time.monotonic() + self.spec.timeout if self.spec.timeout else None
        status = progress.set_status if progress else (lambda s: None)
        status("HF default (baseline)")
        baseline = self.baseline(status)
        if not baseline.ok:
            raise NoFeasibleRecipe(f"the HF-default baseline itself failed ({baseline.status}): {baseline.error}")
        records: list[TrialRecord] = []
        interrupted = False
        done = self._finished(study)
        asks = 0
        with _StopFlag() as flag:
            while done < self.spec.trials and asks < self.spec.trials * 5:
                if flag.stop or (deadline and time.monotonic() > deadline):
                    interrupted = flag.stop
                    break
                if self.spec.sampler == "grid" and study.sampler.is_exhausted(study):
                    break
                asks += 1
                record = self.run_trial(study, baseline, status)
                records.append(record)
                if record.status != "invalid":
                    done += 1
                if progress:
                    progress.trial_done(record, self)
        return self.result(study, baseline, records, interrupted)

    @staticmethod
    def _finished(study) -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return len(study.get_trials(deepcopy=False, states=states))

    def result(self, study, baseline, records, interrupted) -> SearchResult:
        everything = self.study_records(study)
        feasible = [r for r in everything if r.status == "ok" and r.feasible]
        base = next((r for r in everything if r.recipe == self.baseline_recipe and r.status == "ok"), None)
        if not feasible:
            raise NoFeasibleRecipe(self.binding_message(everything))
        best = self.pareto(feasible) if len(self.spec.objectives) > 1 else [self.best_of(feasible)]
        with self.store.session() as s:
            s.query(m.Study).filter_by(name=self.study_name).update({"best_measurement_id": best[0].measurement_id})
        return SearchResult(self.study_name, everything, best, base, interrupted)

    def study_records(self, study) -> list[TrialRecord]:
        """Every trial of the study (this run's and earlier ones'), with its stored measurement."""
        ids = {t.user_attrs["measurement_id"]: t.number for t in study.get_trials(deepcopy=False)
               if "measurement_id" in t.user_attrs}
        out = []
        with self.store.session() as s:
            for mid, number in sorted(ids.items(), key=lambda kv: kv[1]):
                row = s.get(m.Measurement, mid)
                rec = TrialRecord(number, row.id, row.recipe.recipe, row.status, dict(row.figures or {}), row.error,
                                  row.study != self.study_name, False)
                if rec.status == "ok":
                    rec.feasible = all(v <= 0 for v in self.violations(rec.result).values())
                out.append(rec)
        return out

    def best_of(self, records: list[TrialRecord]) -> TrialRecord:
        key, direction = self.spec.objectives[0]
        pick = min if direction == "minimize" else max
        return pick(records, key=lambda r: r.result[key])

    def pareto(self, records: list[TrialRecord]) -> list[TrialRecord]:
        def loss(r):  # every objective as "lower is better"
            return [r.result[k] if d == "minimize" else -r.result[k] for k, d in self.spec.objectives]

        def dominates(a, b):
            la, lb = loss(a), loss(b)
            return all(x <= y for x, y in zip(la, lb)) and any(x < y for x, y in zip(la, lb))

        front = [r for r in records if not any(dominates(o, r) for o in records)]
        key, direction = self.spec.objectives[0]
        return sorted(front, key=lambda r: r.result[key], reverse=direction == "maximize")

    def binding_message(self, records: list[TrialRecord]) -> str:
        """Which limit binds, and how close the nearest candidate came."""
        ok = [r for r in records if r.status == "ok"]
        if not ok:
            failures = ", ".join(sorted({r.status for r in records})) or "none measured"
            return f"no candidate was measured successfully ({failures})"
        parts = []
        for limit in self.spec.budget.limits:
            if limit.key == "quality" and self.spec.source.config_only:
                continue
            scored = [(limit.violation(r.result), r) for r in ok if limit.violation(r.result) is not None]
            if scored and all(v > 0 for v, _ in scored):
                v, r = min(scored, key=lambda t: t[0])
                parts.append(f"{limit.metric}: nearest candidate {format_value(limit.key, r.result[limit.key])} "
                             f"{'>' if limit.op == '<=' else '<'} {format_value(limit.key, limit.value)} "
                             f"({describe(r.recipe, self.optimizations)})")
        if not parts:  # every limit is met by someone, never all by one candidate
            def total(r):
                return sum(max(0.0, v) for v in self.violations(r.result).values())
            r = min(ok, key=total)
            missed = [k for k, v in self.violations(r.result).items() if v > 0]
            parts.append(f"no candidate meets all limits at once; nearest ({describe(r.recipe, self.optimizations)}) "
                         f"misses {', '.join(missed)}")
        return "no candidate meets the budget: " + "; ".join(parts)
