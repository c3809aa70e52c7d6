"""The search: an Optuna study over the plugins' space for this target, against the budget.

Each step asks for a candidate (:mod:`autotune.proposals`: seeds, refinements, the sampler), checks
the plugin rules (an impossible one is pruned and recorded), reuses a measurement the database
already holds when it still stands for this one (:mod:`autotune.reuse`), or measures it in
isolation; every outcome is stored and told to Optuna with the budget as constraints
(:mod:`autotune.study`). The HF default and the plugins' seed recipes are asked first; trials run in
lanes (:mod:`autotune.lanes`). The verdicts (what a candidate misses, what binds) belong to
:class:`~autotune.budget.Budget`; the rows to :mod:`autotune.store`; this module only orchestrates."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import optuna

from . import space as spaces
from . import compile_share
from . import study as protocol
from .compile_cost import MARGIN, CompileCost, Past
from .errors import NoFeasibleRecipe, UsageError
from .evaluate import Evaluation, evaluate
from .figures import SPEED_KEYS, Figures
from .states import Status
from .optimization import Optimization
from .proposals import check_sampler, make_sampler, next_trial
from .recipe import describe, impossible, recipe_key, resolve
from .registry import get_seeds
from .reuse import Today, reusable, reuse_key
from .spec import BASELINE_TIMEOUT_S, SearchSpec
from .store import Store, queries, writes


@dataclass
class TrialRecord:
    """One trial as the search saw it."""

    number: int
    measurement_id: int
    recipe: dict
    status: Status
    figures: Figures
    error: str | None
    reused: bool
    missed: list[str] = field(default_factory=list)  # budget limits an ok trial misses

    @property
    def feasible(self) -> bool:
        return self.status == Status.OK and not self.missed


@dataclass
class SearchResult:
    study_name: str
    records: list[TrialRecord]
    best: list[TrialRecord]  # one, or the Pareto front
    baseline: TrialRecord | None
    interrupted: bool = False
    trial_limit_s: float | None = None
    #: when nothing fits (``best`` empty): which limit binds and how close the nearest candidate came
    binding: str | None = None
    #: this run's wall time (baseline to last trial) and its lanes (trials side by side)
    wall_s: float | None = None
    lanes: int = 1


class Search:
    """One search run; :meth:`step` is reusable by the daemon (several workers, one study)."""

    def __init__(self, spec: SearchSpec, store: Store, optimizations: Mapping[str, Optimization]):
        self.spec, self.store, self.optimizations = spec, store, optimizations
        self.budget = spec.budget
        self.model_info = spec.source.info(draft=spec.draft)
        self.space = spaces.build_space(optimizations, spec.target, spec.restrict, self.model_info)
        check_sampler(spec.sampler, self.space)
        self.study_name = spec.study_name or spec.default_study_name()
        self.baseline_recipe = resolve({}, optimizations)
        self.seeds = self._seed_recipes()
        self._seed_keys = {recipe_key(r) for r in self.seeds}
        self.reuse_key = reuse_key(spec, optimizations)
        self.trial_limit_s = spec.trial_timeout
        self.baseline_record: TrialRecord | None = None
        self._best_feasible: Figures | None = None
        self._measured_now: set[int] = set()  # measurement ids this run made
        self.gate = None  # an autotune.isolate.Gate while trials run side by side (spec.lanes > 1)
        self.wall_s: float | None = None  # the last run's, from its baseline to its last trial
        self.deadline: float | None = None  # monotonic: when a time-boxed run stops asking
        self.compile_cost: CompileCost | None = None  # built once the baseline tells the model's size
        self.compile_cache = compile_share.configured()  # the team's (a Redis URL), or None
        self.ids = writes.ensure_rows(
            store, model=spec.source.name, config_only=spec.source.config_only,
            target_fingerprint=spec.target.to_dict(), hardware_key=spec.target.hardware_key,
            versions_key=spec.target.versions_key, workload_key=spec.workload.key,
            workload_definition=spec.workload.to_dict())

    def _seed_recipes(self) -> list[dict]:
        out: list[dict] = []
        for seed in get_seeds(self.spec.target, self.optimizations):
            recipe = spaces.canonical(resolve(seed.recipe, self.optimizations), self.optimizations,
                                      self.spec.target, self.model_info)
            if recipe != self.baseline_recipe and recipe not in out and \
                    impossible(recipe, self.optimizations, self.spec.target, self.model_info) is None and \
                    spaces.contains(self.space, recipe):
                out.append(recipe)
        first = [self.baseline_recipe] if spaces.contains(self.space, self.baseline_recipe) else []
        return first + out

    # -- the study ---------------------------------------------------------------------------
    def open_study(self, storage=None) -> optuna.Study:
        """Create or resume the study (``storage``: e.g. one with heartbeats, for the daemon); trials
        a killed search of this host left running are queued again."""
        directions = [d for _, d in self.spec.objectives]
        sampler = make_sampler(self.spec.sampler, self.spec.seed, self.space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = storage or self.store.optuna_storage()
        study = optuna.create_study(study_name=self.study_name, storage=storage, directions=directions,
                                    sampler=sampler, load_if_exists=True)
        if study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions]:
            raise UsageError(f"study {self.study_name!r} exists with other objectives; pick another --study name")
        writes.ensure_study(self.store, self.study_name, self.ids, budget=self.budget.text,
                            objective=",".join(f"{k}:{d}" for k, d in self.spec.objectives))
        if self.spec.price_per_hour is not None:  # the report prices every trial from it
            study.set_user_attr(protocol.Attr.PRICE_PER_HOUR, self.spec.price_per_hour)
        protocol.retry_orphans(study, storage)
        return study

    def ask(self, study: optuna.Study) -> optuna.Trial:
        """The next trial (see :func:`autotune.proposals.next_trial`)."""
        return next_trial(study, self.seeds, self.space, self.spec.sampler, len(self.spec.objectives) == 1,
                          self.optimizations, self.spec.target, self.spec.seed, self.model_info)

    # -- measuring ---------------------------------------------------------------------------
    def baseline(self, on_status: Callable[[str], None] = lambda s: None) -> TrialRecord:
        """The HF-default measurement on this target and workload: measured once and reused, never
        reused when it failed, measured again once with twice the repeats when it was noisy."""
        row = self._reusable(self._earlier(self.baseline_recipe), is_baseline=True)
        if row is not None:
            record = self._record(-1, row)
        else:
            on_status("HF default (baseline)")
            record = self._measure(self.baseline_recipe, None, is_baseline=True)
        if row is None and record.status == Status.OK and record.figures.noisy:
            on_status("HF default again (the first baseline was noisy)")
            policy = replace(self.spec.policy, max_runs=2 * self.spec.policy.max_runs,
                             max_measure_s=2 * self.spec.policy.max_measure_s)
            again = self._measure(self.baseline_recipe, None, is_baseline=True, policy=policy)
            if again.status == Status.OK and again.figures.cv < record.figures.cv:
                record = again
        if record.status == Status.OK:
            writes.set_study_result(self.store, self.study_name, baseline_id=record.measurement_id)
            if self.trial_limit_s is None:
                f = record.figures
                self.trial_limit_s = self.spec.policy.trial_limit(f.wall_s or 0.0, (f.e2e_ms_p50 or 0.0) / 1e3)
        self.baseline_record = record
        self.compile_cost = CompileCost(queries.compile_history(self.store), self.spec.target.hardware_key,
                                        self.spec.target.versions_key, self.ids.model_id,
                                        record.figures.weights_bytes)
        return record

    def measure_or_reuse(self, recipe: dict, on_status=lambda s: None, number: int = -1) -> TrialRecord:
        cap = self.first_call_cap_s(self.spec.policy, seed=recipe_key(recipe) in self._seed_keys)
        predicted = self.compile_cost.predict(recipe) if self.compile_cost else None
        cap, defer = self.cap_for(predicted, cap)
        earlier = [r for r in self._earlier(recipe) if defer or (r.figures or {}).get("phase") != "deferred"]
        row = self._reusable(earlier, is_baseline=False, first_call_cap_s=cap)
        if row is not None:
            return self._record(number, row)
        if defer:
            return self._record_deferred(number, recipe, predicted, cap)
        on_status(describe(recipe, self.optimizations))
        return self._measure(recipe, self.baseline_record, is_baseline=False, number=number, first_call_cap_s=cap,
                             predicted=predicted)

    def cap_for(self, predicted, cap: float) -> tuple[float, bool]:
        """The compile cap for a candidate whose first call is ``predicted`` (or None: launched under
        ``cap``, nothing known yet), and whether to defer it: one predicted past its cap gets a cap
        that fits when that is within the policy's cap and a quarter of the search's time left;
        otherwise it is deferred, never launched blind."""
        if predicted is None or predicted.seconds <= cap:
            return cap, False
        fits = predicted.seconds * MARGIN
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if fits <= self.spec.policy.max_first_call_s and (left is None or fits <= left / 4):
            return fits, False
        return cap, True

    def _record_deferred(self, number: int, recipe: dict, predicted, cap: float) -> TrialRecord:
        """A candidate whose compile is predicted past the cap it could get: pruned without a launch,
        remembered with the cap (a search with a larger one measures it)."""
        figures = Figures(phase="deferred", first_call_cap_s=cap, predicted_first_call_s=predicted.seconds)
        row = writes.record_measurement(
            self.store, self.ids, recipe_key=recipe_key(recipe), recipe=recipe, study=self.study_name,
            is_baseline=False, status=Status.PRUNED.value, figures=figures.to_dict(),
            error=f"deferred: its compile is predicted at {predicted.text()}, past the {cap:.0f} s cap",
            reuse_key=self.reuse_key, trial_limit_s=self.trial_limit_s)
        return self._record(number, row)

    def _earlier(self, recipe: dict) -> list:
        return queries.previous(self.store, self.ids.model_id, self.ids.target_id, self.ids.workload_id,
                                writes.key_hash(recipe_key(recipe)), self.reuse_key)

    def _measure(self, recipe, baseline: TrialRecord | None, is_baseline: bool, number: int = -1,
                 policy=None, first_call_cap_s: float | None = None, predicted=None) -> TrialRecord:
        """Measure ``recipe`` in isolation and store it; ``first_call_cap_s`` stops its compilation
        (None for the baseline: never cut)."""
        limit = (self.trial_limit_s or BASELINE_TIMEOUT_S) if not is_baseline else \
            (self.spec.trial_timeout or BASELINE_TIMEOUT_S)
        base_eval = None if baseline is None else Evaluation(baseline.recipe, baseline.status, baseline.figures)
        ev = evaluate(self.spec.source, recipe, self.spec.workload, self.spec.target, self.optimizations,
                      baseline=base_eval, timeout=limit, policy=policy or self.spec.policy,
                      incumbent=None if is_baseline else self._incumbent(),
                      first_call_cap_s=first_call_cap_s, gate=self.gate, compile_cache=self.compile_cache,
                      compile_artifact=self._shared_artifact(recipe) if not is_baseline else None)
        if self.gate is not None and self.spec.lanes > 1:
            ev.figures.lanes = self.spec.lanes
        if predicted is not None:
            ev.figures.predicted_first_call_s = predicted.seconds
        row = writes.record_measurement(
            self.store, self.ids, recipe_key=recipe_key(recipe), recipe=recipe, study=self.study_name,
            is_baseline=is_baseline, status=ev.status.value, error=ev.error, figures=ev.figures.to_dict(),
            reuse_key=self.reuse_key, trial_limit_s=limit)
        self._measured_now.add(row.id)
        self._learn(row.id, recipe, ev.figures)
        return self._record(number, row)

    def _learn(self, measurement_id: int, recipe: dict, f: Figures) -> None:
        """Add this run's first call to the predictor's history (at least the cap when stopped at it)."""
        seconds = f.first_call_cap_s if f.first_call_cap_s is not None else f.first_call_s
        if self.compile_cost is not None and seconds is not None:
            self.compile_cost.add(Past(measurement_id, self.ids.model_id, self.spec.target.hardware_key,
                                       self.spec.target.versions_key, recipe, seconds,
                                       f.first_call_cap_s is not None, self.compile_cost.weights_bytes))

    def _shared_artifact(self, recipe: dict) -> str | None:
        """The team compile cache's artifact the database names for this recipe and model on this
        hardware class and versions (the newest); None without a team cache."""
        if not self.compile_cache:
            return None
        return queries.compile_artifact(self.store, self.ids.model_id, self.spec.target.hardware_key,
                                        self.spec.target.versions_key, writes.key_hash(recipe_key(recipe)))

    def first_call_cap_s(self, policy, seed: bool = False) -> float:
        """How long a candidate's first call (its compilation) may run before it is pruned: the
        policy's cap, and within a time-boxed search at most a tenth of the search's time, so one
        pathological compile cannot eat the budget of ten candidates — except a seed's, the prior's
        best bets, which get the policy's whole cap (an AOTInductor seed compiles for ~65 s cold)."""
        if self.spec.timeout and not seed:
            return min(policy.max_first_call_s, max(30.0, self.spec.timeout / 10))
        return policy.max_first_call_s

    def _reusable(self, earlier: list, is_baseline: bool, first_call_cap_s: float | None = None):
        """Which earlier measurement stands for a new one (:func:`autotune.reuse.reusable`)."""
        today = Today(self.study_name, self.trial_limit_s, self.spec.lanes, self.spec.remeasure,
                      frozenset(self._measured_now))
        return reusable(earlier, today, is_baseline, first_call_cap_s)

    def _incumbent(self) -> Figures | None:
        """The figures a candidate is abandoned against (``abandon_factor`` times slower): the best
        feasible so far — only when every objective is a speed (a slow candidate may win on memory)."""
        if not all(key in SPEED_KEYS for key, _ in self.spec.objectives):
            return None
        return self._best_feasible

    def _note_incumbent(self, record: TrialRecord) -> None:
        e2e = record.figures.e2e_ms_p50
        if record.feasible and e2e is not None and record.figures.tpot_ms_p50 is not None:
            if self._best_feasible is None or e2e < self._best_feasible.e2e_ms_p50:
                self._best_feasible = record.figures

    def _record(self, number: int, row) -> TrialRecord:
        figures = Figures.from_dict(row.figures)
        status = Status(row.status)
        record = TrialRecord(number, row.id, row.recipe.recipe, status, figures, row.error,
                             reused=row.study != self.study_name)
        if status == Status.OK:
            record.missed = self.budget.missed(figures)
        return record

    # -- one step ----------------------------------------------------------------------------
    def step(self, study: optuna.Study, on_status=lambda s: None, trial: optuna.Trial | None = None) -> TrialRecord:
        """Ask (unless given an asked trial), check the rules, measure or reuse, store, tell."""
        trial = trial or self.ask(study)
        protocol.claim(trial)
        try:
            recipe = resolve(spaces.suggest(trial, self.space), self.optimizations)
            reason = impossible(recipe, self.optimizations, self.spec.target, self.model_info)
            if reason:
                record = self._record_invalid(trial.number, recipe, reason)
            else:
                record = self.measure_or_reuse(recipe, on_status, number=trial.number)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        protocol.record(trial, record.measurement_id, describe(recipe, self.optimizations), record.status,
                        record.error)
        violations = self.budget.violations(record.figures) if record.status == Status.OK else {}
        protocol.tell(study, trial, record.status, record.figures, violations, self.spec.objectives)
        self._note_incumbent(record)
        return record

    def _record_invalid(self, number: int, recipe: dict, reason: str) -> TrialRecord:
        row = writes.record_measurement(
            self.store, self.ids, recipe_key=recipe_key(recipe), recipe=recipe, study=self.study_name,
            is_baseline=False, status=Status.INVALID.value, error=reason, figures={}, reuse_key=self.reuse_key,
            trial_limit_s=None)
        return self._record(number, row)

    # -- the whole run -----------------------------------------------------------------------
    def run(self, progress=None, strict: bool = True) -> SearchResult:
        """The whole search; ``strict=False`` returns a result with an empty ``best`` and its
        ``binding`` explanation when nothing fits, instead of raising :class:`NoFeasibleRecipe`.
        With ``spec.lanes`` above one, that many trials run side by side (:mod:`autotune.lanes`)."""
        from . import isolate

        study = self.open_study()
        started = time.monotonic()
        self.deadline = started + self.spec.timeout if self.spec.timeout else None
        status = progress.set_status if progress else (lambda s: None)
        baseline = self.baseline(status)
        if baseline.status != Status.OK:
            raise NoFeasibleRecipe(f"the HF-default baseline itself failed ({baseline.status}): {baseline.error}")
        self._note_incumbent(baseline)
        for record in self.study_records(study):  # a resumed study's incumbent
            self._note_incumbent(record)
        self.gate = isolate.Gate()  # with one lane too: a second Ctrl-C stops the lane's trial through it
        counts = {"done": protocol.counted_trials(study)[0], "asked": 0}

        def more(in_flight: int) -> bool:
            return (counts["done"] + in_flight < self.spec.trials and counts["asked"] < self.spec.trials * 5
                    and not (self.spec.sampler == "grid" and study.sampler.is_exhausted(study)))

        def ask():
            counts["asked"] += 1
            return self.ask(study)

        def done(record: TrialRecord) -> None:
            counts["done"] += record.status != Status.INVALID
            if progress:
                progress.trial_done(record, self)

        from .lanes import run_lanes

        try:
            interrupted = run_lanes(max(1, self.spec.lanes), self.gate, more, ask,
                                    lambda trial: self.step(study, status, trial), done,
                                    self.deadline)
        finally:
            self.gate = None
        self.wall_s = time.monotonic() - started
        return self.result(study, interrupted, strict)

    def result(self, study, interrupted: bool = False, strict: bool = True) -> SearchResult:
        everything = self.study_records(study)
        by_id = {r.measurement_id: r for r in everything}
        best = [by_id[protocol.measurement_id(t)] for t in study.best_trials if protocol.measurement_id(t) in by_id]
        key, direction = self.spec.objectives[0]
        best.sort(key=lambda r: r.figures.get(key), reverse=direction == "maximize")
        binding = None
        if not best:
            binding = self.budget.explain_miss(
                (describe(r.recipe, self.optimizations), r.figures) for r in everything if r.status == Status.OK)
            if strict:
                raise NoFeasibleRecipe(binding)
        else:
            writes.set_study_result(self.store, self.study_name, best_id=best[0].measurement_id)
        base = self.baseline_record or next((r for r in everything if r.recipe == self.baseline_recipe
                                             and r.status == Status.OK), None)
        return SearchResult(self.study_name, everything, best, base, interrupted, self.trial_limit_s, binding,
                            self.wall_s, self.spec.lanes)

    def study_records(self, study) -> list[TrialRecord]:
        """Every trial of the study (this run's and earlier ones'), with its stored measurement."""
        numbers = protocol.measurement_ids(study)
        rows = queries.by_ids(self.store, numbers)
        return [self._record(numbers[mid], rows[mid]) for mid in sorted(numbers, key=numbers.get) if mid in rows]
