"""The search: an Optuna study over the plugins' space for this target, against the budget.

Each step asks Optuna for a candidate, checks the plugin rules (an impossible one is pruned and
recorded), reuses a measurement the database already holds when it still stands for this one, or
measures it in isolation; every outcome is stored and told to Optuna with the budget as constraints.
The HF default and the plugins' seed recipes (the Transformers guide's among them) are asked first.
The verdicts (what a candidate misses, what binds) belong to :class:`~autotune.budget.Budget`; the
rows to :mod:`autotune.store`; this module only orchestrates."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import optuna

from . import __version__
from . import space as spaces
from .errors import NoFeasibleRecipe, UsageError
from .evaluate import Evaluation, evaluate
from .figures import Figures, Status
from .optimization import Optimization
from .recipe import describe, impossible, recipe_key, resolve
from .registry import get_seeds
from .spec import BASELINE_TIMEOUT_S, SAMPLERS, SearchSpec
from .store import Store, queries, writes

#: objectives whose candidates can be judged hopeless by their speed alone
SPEED_KEYS = ("tpot_ms_p50", "ttft_ms_p50", "e2e_ms_p50", "tokens_per_s")


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
    jobs: int = 1


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


#: the most points a grid search may list (Optuna's GridSampler holds them all in memory)
MAX_GRID_POINTS = 100_000
#: TPE's random start: finished trials before it models them (and before refinements begin)
TPE_STARTUP = 4
#: the samplers whose proposals alternate with refinements of the leader (see :func:`refinement`)
REFINED = ("tpe",)
#: a trial's user attribute: pruned because its first call (compilation) ran past the cap
COMPILE_CAPPED = "compile_capped"


def check_sampler(name: str, space) -> None:
    """A usage error for a sampler that cannot search ``space``: an unknown name, or a grid too large
    to list (checked when a search is set up, before anything is measured or drawn)."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if name == "grid":
        points = math.prod(len(c) for c in spaces.sampled(space).values())
        if points > MAX_GRID_POINTS:  # Optuna lists every point up front: a whole space would exhaust memory
            raise UsageError(f"--sampler grid over this space lists {points:,} points (at most {MAX_GRID_POINTS:,}): "
                             "narrow the space in a study file's [space] table, or use tpe / random")


def make_sampler(name: str, seed, space):
    check_sampler(name, space)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna: we chose them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(spaces.sampled(space), seed=seed)


def refinement(study: optuna.Study, space, optimizations, target, seed: int | None, model=None) -> dict | None:
    """When it is refinement's turn, the params of an untried recipe one option away from the leader
    (the study's best feasible trial; two options away once no one-option change is left), chosen
    at random among those the rules allow; else None, and the sampler proposes.

    Refinements take every other proposal once ``TPE_STARTUP`` trials have finished (never two in a
    row: the sampler keeps exploring), and pause once a refinement of the leader was pruned at the
    compile cap, until another leader appears: measured in the README's 10-minute search, each of
    the AOTInductor seed's neighbours compiled past the cap (~65 s cold on 2 cores). The space's
    good recipes share most choices (bf16, int8 weights, a static cache and a compiled loop), and
    the best differs from the runners-up in one or two of them: replayed over a whole CPU grid of 40
    recipes, TPE alone needed a median 10 trials to come within 5% of its best, TPE with refinements
    8, random search 22 (benchmarks/RESULTS.md)."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(1 for t in trials if t.state.is_finished())
    if finished < TPE_STARTUP or trials[-1].user_attrs.get("proposed_by") == "refinement":
        return None
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                and all(v <= 0 for v in t.constraints.values())]
    if not complete:
        return None
    best = (min if study.direction == optuna.study.StudyDirection.MINIMIZE else max)(complete, key=lambda t: t.value)
    if any(t.number > best.number and t.user_attrs.get("proposed_by") == "refinement"
           and t.user_attrs.get(COMPILE_CAPPED) for t in trials):
        return None  # this leader's neighbours compile longer than the search affords: the sampler's turn
    leader = spaces.recipe_for(best.params, space, optimizations)
    # a trial asked but not yet suggested (another daemon worker's) holds its enqueued params aside
    tried = {recipe_key(spaces.recipe_for({**t.system_attrs.get("fixed_params", {}), **t.params}, space,
                                          optimizations)) for t in trials}
    for changes in (1, 2):
        untried = [r for r in spaces.neighbours(leader, space, optimizations, changes)
                   if recipe_key(r) not in tried and impossible(r, optimizations, target, model) is None]
        if untried:
            pick = random.Random(None if seed is None else f"{seed}:{len(trials)}").choice(untried)
            return spaces.params_for(pick, space)
    return None


def tell_pruned(study: optuna.Study, trial, figures: Figures, objective: str | None) -> None:
    """Tell Optuna a pruned trial as every search does: with its partial ``objective`` when one was
    measured (lets TPE rank hopeless candidates among themselves), and marked :data:`COMPILE_CAPPED`
    when its first call ran past the compile cap (pauses refinements, see :func:`refinement`)."""
    if figures.first_call_cap_s is not None:
        trial.set_user_attr(COMPILE_CAPPED, True)
    partial = figures.get(objective) if objective else None
    if partial is not None:
        trial.report(partial, step=0)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reuse_key(spec: SearchSpec, optimizations: Mapping[str, Optimization]) -> str:
    """What must match, beyond target and workload, for an earlier measurement to stand for a new
    one: the measurement policy, the model's content, autotune's and every plugin's version."""
    raw = {"policy": spec.policy.key, "model": spec.source.fingerprint, "autotune": __version__,
           **({"draft": spec.draft.fingerprint} if spec.draft else {}),
           "plugins": {name: f"{type(o).__module__}:{o.version}" for name, o in optimizations.items()}}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


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
        self.gate = None  # an autotune.isolate.Gate while trials run side by side (spec.jobs > 1)
        self.wall_s: float | None = None  # the last run's, from its baseline to its last trial
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
        """Create or resume the study (``storage``: e.g. one with heartbeats, for the daemon)."""
        directions = [d for _, d in self.spec.objectives]
        sampler = make_sampler(self.spec.sampler, self.spec.seed, self.space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=self.study_name, storage=storage or self.store.optuna_storage(),
                                    directions=directions, sampler=sampler, load_if_exists=True)
        if study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions]:
            raise UsageError(f"study {self.study_name!r} exists with other objectives; pick another --study name")
        writes.ensure_study(self.store, self.study_name, self.ids, budget=self.budget.text,
                            objective=",".join(f"{k}:{d}" for k, d in self.spec.objectives))
        if self.spec.price_per_hour is not None:  # the report prices every trial from it
            study.set_user_attr("price_per_hour", self.spec.price_per_hour)
        self._retry_orphans(study, storage or self.store.optuna_storage())
        return study

    def _retry_orphans(self, study: optuna.Study, storage) -> None:
        """Trials left running by a process of this host that is gone (kill -9 of a search) are
        failed and queued again. Other hosts' trials are left to their heartbeats."""
        host = socket.gethostname()
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
            if owner_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            if storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
                optuna.storages.RetryFailedTrialCallback(max_retry=3)(study, storage.get_trial(trial_id))

    def ask(self, study: optuna.Study) -> optuna.Trial:
        """The next trial: a waiting one first (e.g. the retry of a trial whose worker died), else
        the next seed recipe not yet tried, else a refinement of the leader when it is its turn
        (:func:`refinement`), else whatever the sampler proposes. Seeds and refinements are enqueued
        one at a time, just before they are asked, so they never starve a retry; each trial's
        ``proposed_by`` user attribute says which it was."""
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting and self.spec.sampler != "grid":  # a grid visits everything anyway
            done = study.user_attrs.get("seeds_asked", 0)
            if done < len(self.seeds):
                study.set_user_attr("seeds_asked", done + 1)
                study.enqueue_trial(spaces.params_for(self.seeds[done], self.space), user_attrs={"proposed_by": "seed"})
            elif self.spec.sampler in REFINED and len(self.spec.objectives) == 1:
                params = refinement(study, self.space, self.optimizations, self.spec.target, self.spec.seed,
                                    self.model_info)
                if params is not None:
                    study.enqueue_trial(params, user_attrs={"proposed_by": "refinement"})
        return study.ask()

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
        return record

    def measure_or_reuse(self, recipe: dict, on_status=lambda s: None, number: int = -1) -> TrialRecord:
        cap = self.first_call_cap_s(self.spec.policy, seed=recipe_key(recipe) in self._seed_keys)
        row = self._reusable(self._earlier(recipe), is_baseline=False, first_call_cap_s=cap)
        if row is not None:
            return self._record(number, row)
        on_status(describe(recipe, self.optimizations))
        return self._measure(recipe, self.baseline_record, is_baseline=False, number=number, first_call_cap_s=cap)

    def _earlier(self, recipe: dict) -> list:
        return queries.previous(self.store, self.ids.model_id, self.ids.target_id, self.ids.workload_id,
                                writes.key_hash(recipe_key(recipe)), self.reuse_key)

    def _measure(self, recipe, baseline: TrialRecord | None, is_baseline: bool, number: int = -1,
                 policy=None, first_call_cap_s: float | None = None) -> TrialRecord:
        """Measure ``recipe`` in isolation and store it; ``first_call_cap_s`` stops its compilation
        (None for the baseline: never cut)."""
        limit = (self.trial_limit_s or BASELINE_TIMEOUT_S) if not is_baseline else \
            (self.spec.trial_timeout or BASELINE_TIMEOUT_S)
        base_eval = None if baseline is None else Evaluation(baseline.recipe, baseline.status, baseline.figures)
        ev = evaluate(self.spec.source, recipe, self.spec.workload, self.spec.target, self.optimizations,
                      baseline=base_eval, timeout=limit, policy=policy or self.spec.policy,
                      incumbent=None if is_baseline else self._incumbent(),
                      first_call_cap_s=first_call_cap_s, gate=self.gate)
        if self.gate is not None and self.spec.jobs > 1:
            ev.figures.lanes = self.spec.jobs
        row = writes.record_measurement(
            self.store, self.ids, recipe_key=recipe_key(recipe), recipe=recipe, study=self.study_name,
            is_baseline=is_baseline, status=ev.status.value, error=ev.error, figures=ev.figures.to_dict(),
            reuse_key=self.reuse_key, trial_limit_s=limit)
        self._measured_now.add(row.id)
        return self._record(number, row)

    def first_call_cap_s(self, policy, seed: bool = False) -> float:
        """How long a candidate's first call (its compilation) may run before it is pruned: the
        policy's cap, and within a time-boxed search at most a tenth of the search's time, so one
        pathological compile cannot eat the budget of ten candidates — except a seed's, the prior's
        best bets, which get the policy's whole cap (an AOTInductor seed compiles for ~65 s cold)."""
        if self.spec.timeout and not seed:
            return min(policy.max_first_call_s, max(30.0, self.spec.timeout / 10))
        return policy.max_first_call_s

    def _reusable(self, earlier: list, is_baseline: bool, first_call_cap_s: float | None = None):
        """Which earlier measurement, if any, stands for a new one (with ``--remeasure``, only one this
        run made). Successes always do. Failures are
        reused within the study that measured them; another study retries once (a config that failed
        in two studies stays failed) — except a failed baseline, always measured again, and a timeout
        under a shorter limit than today's, which says nothing about today's. A candidate pruned as
        hopeless was judged against its study's incumbent: another study measures it again; one
        pruned because its first call (compilation) ran past a cap at least today's
        (``first_call_cap_s``) would run past today's: compile time is the recipe's, the target's and
        the versions', all in the key — so it is reused (or an earlier success of it), and a larger
        cap, in this study or another, fewer trials side by side (``--jobs``: it compiled sharing the
        CPU with more), or ``--remeasure`` measures it again. (Daemon workers that share a host's
        cores compile slower: raise ``max_first_call_s`` for such a pool.)"""
        if not earlier:
            return None
        newest = earlier[0]
        if self.spec.remeasure:  # only what this run itself measured
            return newest if newest.id in self._measured_now else None
        status = Status(newest.status)
        if status == Status.OK:
            return newest
        if is_baseline:
            return None
        if status == Status.TIMEOUT and (newest.trial_limit_s or 0) < (self.trial_limit_s or BASELINE_TIMEOUT_S):
            return None
        pruned = Figures.from_dict(newest.figures) if status == Status.PRUNED else None
        if pruned is not None and pruned.first_call_cap_s is not None:  # stopped at the compile cap
            if first_call_cap_s is None or pruned.first_call_cap_s < first_call_cap_s \
                    or (pruned.lanes or 1) > self.spec.jobs:
                return None  # today's cap is larger, or it compiles with fewer lanes beside it: again
            return next((r for r in earlier if Status(r.status) == Status.OK), newest)  # it did compile once
        if newest.study == self.study_name:
            return newest
        if status == Status.PRUNED:  # judged against another study's incumbent
            return None
        failed_in = {r.study for r in earlier if Status(r.status).failed}
        return newest if len(failed_in) >= 2 else None

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
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
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
        trial.set_user_attr("measurement_id", record.measurement_id)
        trial.set_user_attr("recipe", describe(recipe, self.optimizations))
        trial.set_user_attr("status", record.status.value)
        self._tell(study, trial, record)
        self._note_incumbent(record)
        return record

    def _tell(self, study: optuna.Study, trial: optuna.Trial, record: TrialRecord) -> None:
        if record.status in (Status.INVALID, Status.PRUNED):
            if record.error:
                trial.set_user_attr("failure", f"{record.status}: {record.error}")
            single = len(self.spec.objectives) == 1 and record.status == Status.PRUNED
            tell_pruned(study, trial, record.figures, self.spec.objectives[0][0] if single else None)
            return
        if record.status != Status.OK:
            trial.set_user_attr("failure", f"{record.status}: {record.error}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        for name, v in self.budget.violations(record.figures).items():
            trial.set_constraint(name, v)
        study.tell(trial, [record.figures.get(key) for key, _ in self.spec.objectives])

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
        With ``spec.jobs`` above one, that many trials run side by side (lanes): each is asked when
        a lane is free, and they share an :class:`~autotune.isolate.Gate` so that every timed window
        runs alone."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from .isolate import Gate

        study = self.open_study()
        started = time.monotonic()
        deadline = started + self.spec.timeout if self.spec.timeout else None
        status = progress.set_status if progress else (lambda s: None)
        baseline = self.baseline(status)
        if baseline.status != Status.OK:
            raise NoFeasibleRecipe(f"the HF-default baseline itself failed ({baseline.status}): {baseline.error}")
        self._note_incumbent(baseline)
        for record in self.study_records(study):  # a resumed study's incumbent
            self._note_incumbent(record)
        lanes = max(1, self.spec.jobs)
        self.gate = Gate()  # with one lane too: a second Ctrl-C stops the lane's trial through it
        interrupted = False
        done, asks, running = self.finished(study), 0, set()
        try:
            with _StopFlag() as flag, ThreadPoolExecutor(lanes, thread_name_prefix="autotune-lane") as pool:
                try:
                    while True:
                        stopping = flag.stop or (deadline is not None and time.monotonic() > deadline)
                        interrupted = interrupted or flag.stop
                        while (not stopping and len(running) < lanes and done + len(running) < self.spec.trials
                               and asks < self.spec.trials * 5
                               and not (self.spec.sampler == "grid" and study.sampler.is_exhausted(study))):
                            asks += 1
                            with self.gate.parent_work():
                                trial = self.ask(study)
                            running.add(pool.submit(self._lane, study, status, trial))
                        if not running:
                            break
                        finished, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                        for future in finished:
                            record = future.result()
                            if record.status != Status.INVALID:
                                done += 1
                            if progress:
                                with self.gate.parent_work():
                                    progress.trial_done(record, self)
                except BaseException:
                    self.gate.abort()  # the lanes' trials end now, recorded as nothing
                    raise
        finally:
            self.gate = None
        self.wall_s = time.monotonic() - started
        return self.result(study, interrupted, strict)

    def _lane(self, study, status, trial) -> TrialRecord:
        """One trial in a lane: the search's own work in it never runs during a timed window."""
        with self.gate.parent_work():
            return self.step(study, status, trial)

    @staticmethod
    def finished(study) -> int:
        """Trials that count toward the plan (see :func:`autotune.jobs.counted_trials`)."""
        from .jobs import counted_trials

        return counted_trials(study)[0]

    def result(self, study, interrupted: bool = False, strict: bool = True) -> SearchResult:
        everything = self.study_records(study)
        by_id = {r.measurement_id: r for r in everything}
        best = [by_id[t.user_attrs["measurement_id"]] for t in study.best_trials
                if t.user_attrs.get("measurement_id") in by_id]
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
                            self.wall_s, self.spec.jobs)

    def study_records(self, study) -> list[TrialRecord]:
        """Every trial of the study (this run's and earlier ones'), with its stored measurement."""
        numbers = {t.user_attrs["measurement_id"]: t.number for t in study.get_trials(deepcopy=False)
                   if "measurement_id" in t.user_attrs}
        rows = queries.by_ids(self.store, numbers)
        return [self._record(numbers[mid], rows[mid]) for mid in sorted(numbers, key=numbers.get) if mid in rows]
