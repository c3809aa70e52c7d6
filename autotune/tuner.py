"""The search: an Optuna study over the plugins' space for this target, against the budget.

Each step asks for a candidate (:mod:`autotune.proposals`: seeds, refinements, the sampler), checks
the plugin rules (an impossible one is pruned and recorded), reuses a measurement the database
already holds when it still stands for this one, or measures it in isolation (both
:mod:`autotune.measurer`); every outcome is stored and told to Optuna with the budget as constraints
(:mod:`autotune.study`). The HF default and the plugins' seed recipes are asked first; trials run in
lanes (:mod:`autotune.lanes`). The verdicts (what a candidate misses, what binds) belong to
:class:`~autotune.budget.Budget`; the rows to :mod:`autotune.store`; this module only orchestrates."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import optuna

from . import space as spaces
from . import study as protocol
from .errors import NoFeasibleRecipe, UsageError
from .figures import is_deferred
from .measurer import Measurer, TrialRecord
from .optimization import Optimization
from .proposals import check_sampler, make_sampler, next_trial
from .recipe import describe, impossible, recipe_key, resolve
from .registry import get_seeds
from .spec import SearchSpec
from .states import Status
from .store import Store, queries, writes


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
    #: the HF default and the best measured again back to back at the end (see
    #: :meth:`autotune.measurer.Measurer.side_by_side`), or None when not due
    side_by_side: dict | None = None


class Search:
    """One search run; :meth:`step` is reusable by the daemon (several workers, one study)."""

    def __init__(self, spec: SearchSpec, store: Store, optimizations: Mapping[str, Optimization]):
        self.spec, self.store, self.optimizations = spec, store, optimizations
        self.budget = spec.budget
        workload = spec.workload
        self.model_info = replace(spec.source.info(draft=spec.draft),
                                  rows=max(workload.batch_size, workload.max_batch))
        self.space = spaces.build_space(optimizations, spec.target, spec.restrict, self.model_info)
        check_sampler(spec.sampler, self.space)
        self.study_name = spec.study_name or spec.default_study_name()
        self.baseline_recipe = resolve({}, optimizations)
        self.seeds = self._seed_recipes()
        self.measurer = Measurer(spec, store, optimizations, self.study_name, {recipe_key(r) for r in self.seeds})
        self.wall_s: float | None = None  # the last run's, from its baseline to its last trial

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
        m = self.measurer
        loads = (lambda recipe: m.shared_artifact(recipe) is not None) if m.compile_cache else None
        return next_trial(study, self.seeds, self.space, self.spec.sampler, len(self.spec.objectives) == 1,
                          self.optimizations, self.spec.target, self.spec.seed, self.model_info, loads)

    # -- measuring (autotune.measurer) ------------------------------------------------------
    @property
    def ids(self):
        return self.measurer.ids

    def baseline(self, on_status: Callable[[str], None] = lambda s: None) -> TrialRecord:
        """The HF-default measurement (see :meth:`autotune.measurer.Measurer.baseline`)."""
        return self.measurer.baseline(on_status)

    # -- one step ----------------------------------------------------------------------------
    def step(self, study: optuna.Study, on_status=lambda s: None, trial: optuna.Trial | None = None) -> TrialRecord:
        """Ask (unless given an asked trial), check the rules, measure or reuse, store, tell."""
        trial = trial or self.ask(study)
        protocol.claim(trial)
        try:
            recipe = resolve(spaces.suggest(trial, self.space), self.optimizations)
            reason = impossible(recipe, self.optimizations, self.spec.target, self.model_info)
            if reason:
                record = self.measurer.record_invalid(trial.number, recipe, reason)
            else:
                record = self.measurer.measure_or_reuse(recipe, on_status, number=trial.number)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        protocol.record(trial, record.measurement_id, describe(recipe, self.optimizations), record.status,
                        record.error)
        violations = self.budget.violations(record.figures) if record.status == Status.OK else {}
        protocol.tell(study, trial, record.status, record.figures, violations, self.spec.objectives)
        self.measurer.note_incumbent(record)
        return record

    # -- the whole run -----------------------------------------------------------------------
    def run(self, progress=None, strict: bool = True, started: float | None = None) -> SearchResult:
        """The whole search; ``strict=False`` returns a result with an empty ``best`` and its
        ``binding`` explanation when nothing fits, instead of raising :class:`NoFeasibleRecipe`.
        With ``spec.lanes`` above one, that many trials run side by side (:mod:`autotune.lanes`).
        ``started`` (monotonic): when the caller's clock for ``spec.timeout`` started, e.g. before the
        model was converted (default: now)."""
        from . import isolate

        study = self.open_study()
        run_started = time.monotonic()
        started = run_started if started is None else started  # the timeout's clock; wall_s is the run's own
        m = self.measurer
        status = progress.set_status if progress else (lambda s: None)
        baseline = self.baseline(status)
        if baseline.status != Status.OK:
            raise NoFeasibleRecipe(f"the HF-default baseline itself failed ({baseline.status}): {baseline.error}")
        m.note_incumbent(baseline)
        for record in self.study_records(study):  # a resumed study's incumbent
            m.note_incumbent(record)

        def settle_deadline() -> None:
            """A timeout covers the side-by-side measurement too: the trials stop early enough for it, as
            the best so far would take it (at most a quarter of the search's time; then it runs past the
            timeout rather than not at all). Settled again as each trial ends (the best may have changed)."""
            if self.spec.timeout:
                reserve = min(m.side_by_side_reserve(), self.spec.timeout / 4) if self.spec.side_by_side else 0.0
                m.caps.deadline = started + self.spec.timeout - reserve

        settle_deadline()
        m.gate = isolate.Gate(self.spec.lanes)  # with one lane too: a second Ctrl-C stops the lane's trial through it
        counts = {"done": protocol.counted_trials(study)[0], "asked": 0}

        def more(in_flight: int) -> bool:
            return (counts["done"] + in_flight < self.spec.trials
                    and counts["asked"] < self.spec.trials * protocol.ASKS_PER_TRIAL
                    and not (self.spec.sampler == "grid" and study.sampler.is_exhausted(study)))

        def ask():
            counts["asked"] += 1
            return self.ask(study)

        def done(record: TrialRecord) -> None:
            counts["done"] += protocol.counts_toward_plan(record.status, is_deferred(record.figures))
            settle_deadline()
            if progress:
                progress.trial_done(record, self)

        def launch_deadline() -> float | None:
            """No trial starts unless a typical one of this run ends before the deadline."""
            end = m.caps.deadline
            return None if end is None else end - m.typical_trial_s()

        from .lanes import run_lanes

        try:
            interrupted = run_lanes(max(1, self.spec.lanes), m.gate, more, ask,
                                    lambda trial: self.step(study, status, trial), done, launch_deadline)
        finally:
            m.gate = None
        self.wall_s = time.monotonic() - run_started
        result = self.result(study, interrupted, strict)
        if result.best and not interrupted and self.spec.side_by_side and m.side_by_side_due() \
                and result.best[0].recipe != self.baseline_recipe:
            try:
                result.side_by_side = m.side_by_side(result.best[0], status)
            except KeyboardInterrupt:  # the trials' results stand; only the pair at the end is missing
                result.side_by_side = {"error": "stopped by Ctrl-C"}
            result.side_by_side["seconds"] = time.monotonic() - run_started - self.wall_s
            study.set_user_attr(protocol.Attr.SIDE_BY_SIDE, result.side_by_side)
        return result

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
        base = self.measurer.baseline_record or next((r for r in everything if r.recipe == self.baseline_recipe
                                             and r.status == Status.OK), None)
        return SearchResult(self.study_name, everything, best, base, interrupted, self.measurer.trial_limit_s, binding,
                            self.wall_s, self.spec.lanes)

    def study_records(self, study) -> list[TrialRecord]:
        """Every trial of the study (this run's and earlier ones'), with its stored measurement."""
        numbers = protocol.measurement_ids(study)
        rows = queries.by_ids(self.store, numbers)
        return [self.measurer.record(numbers[mid], rows[mid]) for mid in sorted(numbers, key=numbers.get) if mid in rows]
