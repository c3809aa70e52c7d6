"""Measure or reuse one recipe for a study, and store it.

The baseline policy (measured once, again when far off its CV target), the reuse decision applied to the rows the
store holds (:mod:`autotune.reuse`), the compile caps and deferrals (:mod:`autotune.compile_cost`),
the team compile cache's artifact for a recipe (:mod:`autotune.compile_share`), and the incumbent a
hopeless candidate is judged against. The search (:mod:`autotune.tuner`) decides what to measure;
this module how."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from . import compile_share
from .compile_cost import CompileCaps, CompileCost, shipped_prior
from .evaluate import Evaluation, evaluate
from .figures import COMPILED_ONLY, DEFERRED, SPEED_KEYS, Figures, Key, is_compiled_only, is_deferred
from .optimization import Optimization
from .recipe import describe, recipe_key, resolve
from .reuse import Today, reusable, reuse_key
from .spec import BASELINE_TIMEOUT_S, SearchSpec
from .states import Status
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
    #: measured for this study by an earlier run (another host of the team, or before a resume): this
    #: run spent no time on it
    earlier: bool = False

    @property
    def feasible(self) -> bool:
        return self.status == Status.OK and not self.missed


class Measurer:
    """One study's measurements on this target and workload (``seed_keys``: the seed recipes' keys,
    whose compiles get the policy's whole cap)."""

    def __init__(self, spec: SearchSpec, store: Store, optimizations: Mapping[str, Optimization], study_name: str,
                 seed_keys: set):
        self.spec, self.store, self.optimizations, self.study_name = spec, store, optimizations, study_name
        self.reuse_key = reuse_key(spec, optimizations)
        self.trial_limit_s = spec.trial_timeout
        self.baseline_record: TrialRecord | None = None
        self.baseline_at: float | None = None  # when it was measured (monotonic); None: an earlier run's
        self.caps = CompileCaps(spec.policy, spec.timeout, seed_keys)
        self.compile_cache = compile_share.configured()  # the team's (a Redis URL), or None
        self.gate = None  # an autotune.isolate.Gate while a run's trials run
        self._best_feasible: Figures | None = None
        self._best_here = False  # whether this run measured it: its compiled programs are on this host's disk
        self._measured_now: set[int] = set()  # measurement ids this run made
        self._stored_now: set[int] = set()  # and every row this run stored (deferred, rule-pruned too)
        self._walls: list[float] = []  # the wall time of each trial with figures this run measured
        self.ids = writes.ensure_rows(
            store, model=spec.source.name, config_only=spec.source.config_only,
            target_fingerprint=spec.target.to_dict(), hardware_key=spec.target.hardware_key,
            versions_key=spec.target.versions_key, workload_key=spec.workload.key,
            workload_definition=spec.workload.to_dict())

    def baseline(self, on_status: Callable[[str], None] = lambda s: None) -> TrialRecord:
        """The HF-default measurement on this target and workload: measured once and reused, never
        reused when it failed, measured again once with twice the repeats when it was far off its CV
        target (:func:`too_noisy_for_a_baseline`)."""
        recipe = resolve({}, self.optimizations)
        row = self._reusable(self._earlier(recipe), is_baseline=True)
        if row is not None:
            record = self.record(-1, row)
        else:
            on_status("HF default (baseline)")
            record = self._measure(recipe, is_baseline=True, policy=self.baseline_policy())
            self.baseline_at = time.monotonic()
        if row is None and record.status == Status.OK and too_noisy_for_a_baseline(record.figures, self.spec.policy):
            on_status("HF default again (the first baseline was noisy)")
            policy = replace(self.spec.policy, max_runs=2 * self.spec.policy.max_runs,
                             max_measure_s=2 * self.spec.policy.max_measure_s)
            again = self._measure(recipe, is_baseline=True, policy=policy)
            if again.status == Status.OK and again.figures.cv < record.figures.cv:
                record = again
        if record.status == Status.OK:
            writes.set_study_result(self.store, self.study_name, baseline_id=record.measurement_id)
            if self.trial_limit_s is None:
                f = record.figures
                self.trial_limit_s = self.spec.policy.trial_limit(f.wall_s or 0.0, (f.e2e_ms_p50 or 0.0) / 1e3)
        self.baseline_record = record
        t = self.spec.target
        history = queries.compile_history(self.store)
        if self.spec.timeout and t.device == "cpu":  # a time-boxed search is not launched blind on a fresh machine
            history += shipped_prior()
        self.caps.cost = CompileCost(history, t.hardware_key, t.versions_key, self.ids.model_id,
                                     record.figures.weights_bytes)
        return record

    def baseline_policy(self):
        """The trials' rules; where a time-boxed search measures the HF default again beside the best at its
        end (that pair's ratio is the headline), its envelope pass and warm typical call are its one round
        (``pass_round``): its measured rounds were 28 s of a 600 s search (Xeon, 2026-12-02)."""
        p = self.trial_policy()
        if self.spec.timeout and self.spec.side_by_side:
            return replace(p, pass_round=True)
        return p

    def trial_policy(self):
        """The trials' rules: in a time-boxed search their envelope pass and a typical call (the warm one,
        or one of its own where quality is scored) are their first round (``pass_first``; one measured
        round fewer), where nothing compiled in them."""
        p = self.spec.policy
        return replace(p, pass_first=True) if self.spec.timeout else p

    # -- side by side ------------------------------------------------------------------------
    def side_by_side_due(self) -> bool:
        """Whether the baseline is old enough that the machine may have drifted since (an earlier
        run's always is)."""
        return self.baseline_at is None or time.monotonic() - self.baseline_at >= SIDE_BY_SIDE_AFTER_S

    def side_by_side_policy(self):
        """The trials' measurement rules, less what does not drift (quality) and at most
        :data:`SIDE_BY_SIDE_MEASURE_S` of rounds (two at least, the envelope pass and warm typical call
        the first of them where nothing compiled in them: the HF default's second measured round was ~25 s
        of the README job's 600 on the EPYC)."""
        p = self.spec.policy
        return replace(p, quality=False, abandon_factor=0, screen_factor=0, min_runs=min(2, p.min_runs),
                       max_measure_s=min(p.max_measure_s, SIDE_BY_SIDE_MEASURE_S), pass_first=True)

    def side_by_side_reserve(self) -> float:
        """Seconds a search with a timeout keeps for :meth:`side_by_side`: the baseline's trial without its
        quality calls and with the shorter rounds, and the best feasible so far's likewise, less its first
        call's compilation when this run measured it (its programs are on this host's disk by then; the
        baseline's own stands in until a candidate beats it). Twice the baseline's kept 66 s where the pair
        took 43 (README job, Xeon). A best another host or run measured compiles or loads here: a second
        host's pair took 208 s against the 100 s kept, and its README job ended at 710 s of its 600 (EPYC).
        The HF default's rounds are its longest part (22 s each on the EPYC): the 15 s kept for its rounds
        fell short where the pair measured two (88 s kept, 112 s taken, README job)."""
        def side(f) -> float:
            outside = f.wall_s - (f.measure_s or 0.0) - (f.quality_s or 0.0)  # its envelope pass among it,
            # the pair's first round: then one round at least, more while under the pair's cap on rounds
            round_s = sum(s[Key.e2e_ms_p50] for s in f.shapes or []) / 1e3
            after = max(round_s, min(f.measure_s or round_s, SIDE_BY_SIDE_MEASURE_S))
            return max(0.0, outside) + after

        base = self.baseline_record.figures if self.baseline_record else None
        if base is None or not base.wall_s:
            return 0.0
        best = self._best_feasible if self._best_feasible is not None and self._best_feasible.wall_s else base
        compiled = max(0.0, (best.first_call_s or 0.0) - (best.warmup_s or 0.0)) \
            if best is not base and self._best_here else 0.0
        return side(base) + max(0.0, side(best) - compiled)

    def side_by_side(self, best: TrialRecord, on_status=lambda s: None) -> dict | None:
        """The HF default and ``best`` measured again, back to back, in their own processes: the
        ratio of two figures taken minutes apart is partly the machine's drift (the README job's
        baseline read 18.4 tok/s at its start; beside the winner, runs the same day read 12-13).
        Returns plain data (both sides' figures, how far apart they started), or ``{"error": why}`` when
        either failed. Nothing is stored as a measurement: quality is not scored."""
        policy = self.side_by_side_policy()
        limit = self.trial_limit_s or BASELINE_TIMEOUT_S
        args = (self.spec.source,)
        rest = dict(workload=self.spec.workload, target=self.spec.target, optimizations=self.optimizations,
                    policy=policy, timeout=limit)
        on_status("HF default again, beside the best")
        started = time.monotonic()
        base = evaluate(*args, resolve({}, self.optimizations), **rest)
        if not base.ok:
            return {"error": f"the HF default failed ({base.status.value}): {base.error}"}
        on_status(f"recipe {best.measurement_id} again, beside the HF default")
        apart = time.monotonic() - started
        # measured by another host of the team, its compiled programs load from the team cache: the second host
        # of a README job compiled the winner's AOTInductor package again for its pair (104 s of its 600)
        mine = evaluate(*args, best.recipe, baseline=base, compile_cache=self.compile_cache,
                        compile_artifact=self.shared_artifact(best.recipe), **rest)
        if not mine.ok:
            return {"error": f"recipe {best.measurement_id} failed ({mine.status.value}): {mine.error}"}
        return {"measurement_id": best.measurement_id, "apart_s": apart,
                "baseline": base.figures.shown(), "best": mine.figures.shown()}

    def measure_or_reuse(self, recipe: dict, on_status=lambda s: None, number: int = -1) -> TrialRecord:
        """A stored measurement that stands for this recipe, or a new one (or a deferral: its compile
        is predicted past any cap the search can give it)."""
        artifact = self.shared_artifact(recipe)  # the team holds its compiled artifact: it loads, not compiles
        cap, defer, predicted = self.caps.plan(recipe, recipe_key(recipe), shared=artifact is not None)
        # a compile finished after a search measured nothing: it stands for no measurement
        earlier = [r for r in self._earlier(recipe)
                   if (defer or not is_deferred(r.figures)) and not is_compiled_only(r.figures)]
        row = self._reusable(earlier, is_baseline=False, first_call_cap_s=cap, loads=artifact is not None)
        if row is not None:
            return self.record(number, row)
        if defer:
            figures = Figures(phase=DEFERRED, first_call_cap_s=cap, predicted_first_call_s=predicted.seconds)
            return self._store(number, recipe, Status.PRUNED, figures, self.trial_limit_s,
                               f"deferred: its compile is predicted at {predicted.text()}, past the {cap:.0f} s cap")
        on_status(describe(recipe, self.optimizations))
        return self._measure(recipe, is_baseline=False, number=number, first_call_cap_s=cap, predicted=predicted,
                             compile_artifact=artifact)

    def compile_only(self, recipe: dict, timeout: float) -> TrialRecord:
        """Compile ``recipe`` into the team cache after the search (:mod:`autotune.backfill`), measuring
        nothing, and store it as :data:`~autotune.figures.COMPILED_ONLY`: the stored row's first call joins
        the compile history of later searches (:func:`autotune.store.queries.compile_history`)."""
        ev = evaluate(self.spec.source, recipe, self.spec.workload, self.spec.target, self.optimizations,
                      timeout=timeout, policy=self.spec.policy, compile_cache=self.compile_cache,
                      compile_artifact=self.shared_artifact(recipe), compile_only=True)
        ev.figures.phase = COMPILED_ONLY
        status = Status.PRUNED if ev.status == Status.OK else ev.status
        error = ev.error or "compiled after its search for the team compile cache; nothing measured"
        return self._store(-1, recipe, status, ev.figures, timeout, error)

    def failed_background_limits(self, recipe: dict) -> float:
        """The longest limit a compile of ``recipe`` after a search (:meth:`compile_only`) failed under on
        this target (0: none failed): a background given no more than that would fail again."""
        return max((r.trial_limit_s or 0.0 for r in self._earlier(recipe)
                    if is_compiled_only(r.figures) and Status(r.status).failed), default=0.0)

    def compile_share_display(self) -> str:
        return compile_share.mask(self.compile_cache) if self.compile_cache else "no team compile cache"

    def record_invalid(self, number: int, recipe: dict, reason: str) -> TrialRecord:
        """A candidate the plugins' rules rule out: stored, never run."""
        return self._store(number, recipe, Status.INVALID, Figures(), None, reason)

    def _measure(self, recipe, is_baseline: bool, number: int = -1, policy=None,
                 first_call_cap_s: float | None = None, predicted=None, compile_artifact: str | None = None) -> TrialRecord:
        """Measure ``recipe`` in isolation and store it; ``first_call_cap_s`` stops its compilation
        (None for the baseline: never cut); ``compile_artifact``: the team compile cache's for it."""
        limit = (self.spec.trial_timeout if is_baseline else self.trial_limit_s) or BASELINE_TIMEOUT_S
        base = self.baseline_record if not is_baseline else None
        ev = evaluate(self.spec.source, recipe, self.spec.workload, self.spec.target, self.optimizations,
                      baseline=base and Evaluation(base.recipe, base.status, base.figures), timeout=limit,
                      policy=policy or self.trial_policy(), incumbent=None if is_baseline else self._incumbent(),
                      first_call_cap_s=first_call_cap_s, gate=self.gate, compile_cache=self.compile_cache,
                      compile_artifact=compile_artifact,
                      greedy_match=any(lim.key == "greedy_match" for lim in self.spec.budget.limits))
        if self.gate is not None and self.spec.lanes > 1:
            ev.figures.lanes = self.spec.lanes
        if predicted is not None:
            ev.figures.predicted_first_call_s = predicted.seconds
        record = self._store(number, recipe, ev.status, ev.figures, limit, ev.error, is_baseline)
        self._measured_now.add(record.measurement_id)
        # a first call that loaded the team's compiled artifact compiled nothing: no compile's time
        if not compile_share.loaded(ev.figures.compile_shared):
            self.caps.learn(record.measurement_id, recipe, ev.figures.first_call_s,
                            ev.figures.first_call_cap_s or ev.figures.first_call_past_s)
        return record

    def _store(self, number, recipe, status: Status, figures: Figures, limit, error, is_baseline=False):
        row = writes.record_measurement(
            self.store, self.ids, recipe_key=recipe_key(recipe), recipe=recipe, study=self.study_name,
            is_baseline=is_baseline, status=status.value, error=error, figures=figures.to_dict(),
            reuse_key=self.reuse_key, trial_limit_s=limit)
        self._stored_now.add(row.id)
        return self.record(number, row)

    def _earlier(self, recipe: dict) -> list:
        return queries.previous(self.store, self.ids.model_id, self.ids.target_id, self.ids.workload_id,
                                writes.key_hash(recipe_key(recipe)), self.reuse_key)

    def shared_artifact(self, recipe: dict) -> str | None:
        """The team compile cache's artifact the database names for this recipe and model on this
        hardware class and versions (the newest); None without a team cache."""
        if not self.compile_cache:
            return None
        return queries.compile_artifact(self.store, self.ids.model_id, self.spec.target.hardware_key,
                                        self.spec.target.versions_key, writes.key_hash(recipe_key(recipe)))

    def _reusable(self, earlier: list, is_baseline: bool, first_call_cap_s: float | None = None, loads: bool = False):
        """Which earlier measurement stands for a new one (:func:`autotune.reuse.reusable`)."""
        today = Today(self.study_name, self.trial_limit_s, self.spec.lanes, self.spec.remeasure,
                      frozenset(self._measured_now))
        return reusable(earlier, today, is_baseline, first_call_cap_s, loads)

    def _incumbent(self) -> Figures | None:
        """The figures a candidate is abandoned against (``abandon_factor`` times slower): the best
        feasible so far — only when every objective is a speed (a slow candidate may win on memory)."""
        if not all(key in SPEED_KEYS for key, _ in self.spec.objectives):
            return None
        return self._best_feasible

    def note_incumbent(self, record: TrialRecord) -> None:
        if record.status == Status.OK and record.measurement_id in self._measured_now and record.figures.wall_s:
            self._walls.append(record.figures.wall_s)
        if record.feasible:
            self.caps.seed_fits(record.recipe, recipe_key(record.recipe))
        e2e = record.figures.e2e_ms_p50
        if record.feasible and e2e is not None and record.figures.tpot_ms_p50 is not None:
            if self._best_feasible is None or e2e < self._best_feasible.e2e_ms_p50:
                self._best_feasible = record.figures
                self._best_here = record.measurement_id in self._measured_now

    def typical_trial_s(self) -> float:
        """The median wall time of the trials with figures this run measured, the baseline's among them
        (0 before any): what a search with a timeout leaves before its deadline when it asks for one
        more trial (the README job ran its last trial 10-14 s past its deadline, and ended 20-45 s past
        its 600)."""
        import statistics

        return statistics.median(self._walls) if self._walls else 0.0

    def record(self, number: int, row) -> TrialRecord:
        """A stored row as a trial of this study (reused when another study measured it; earlier when
        this study did, before this run)."""
        figures = Figures.from_dict(row.figures)
        status = Status(row.status)
        reused = row.study != self.study_name
        record = TrialRecord(number, row.id, row.recipe.recipe, status, figures, row.error, reused=reused,
                             earlier=not reused and row.id not in self._stored_now)
        if status == Status.OK:
            record.missed = self.spec.budget.missed(figures)
        return record


#: a baseline older than this (seconds) is measured again beside the best, at the end of a search
SIDE_BY_SIDE_AFTER_S = 120.0
#: at most this many seconds of rounds for each side of the side-by-side measurement
SIDE_BY_SIDE_MEASURE_S = 15.0

#: a baseline is measured again when its CV is more than this many times the policy's target
BASELINE_NOISE_FACTOR = 2.0


def too_noisy_for_a_baseline(figures, policy) -> bool:
    """Whether a fresh baseline is worth a second measurement: only when its CV is far off target. A
    second baseline is a whole trial (on the 2-core Xeon 75 s of a 600 s search, for a CV of 0.095
    against 0.05: its median moves a few percent, within the machine's run-to-run drift)."""
    return figures.cv is not None and figures.cv > BASELINE_NOISE_FACTOR * policy.target_cv
