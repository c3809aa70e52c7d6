"""The Python API: what the command line does, as functions that return results instead of printing.

``cli.py`` is a thin layer over these (it adds click, one-line errors and rendering). Every error is
an :class:`~autotune.errors.AutotuneError`; nothing here prints, except the progress bar of
:func:`search` (tqdm: a widget in a notebook, text on stderr in a terminal)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import AutotuneError, NoFeasibleRecipe, UsageError
from .states import Status

#: the workload fields a caller may set (the rest of a workload, its prompts, is the shipped one)
WORKLOAD_FIELDS = ("kind", "prompt_tokens", "new_tokens", "batch_size", "max_context", "max_batch", "sampling")


def _quiet(_message: str) -> None:
    pass


def _workload_fields(workload) -> dict:
    """``workload``: ``None``, a dict of :data:`WORKLOAD_FIELDS`, or a :class:`~autotune.workload.Workload`."""
    if workload is None:
        return {}
    if not isinstance(workload, Mapping):
        workload = {k: getattr(workload, k, None) for k in WORKLOAD_FIELDS}
    unknown = set(workload) - set(WORKLOAD_FIELDS)
    if unknown:
        raise UsageError(f"workload takes {', '.join(WORKLOAD_FIELDS)}; unknown: {', '.join(sorted(map(str, unknown)))}")
    return {k: v for k, v in workload.items() if v is not None}


# -- search --------------------------------------------------------------------------------------
@dataclass
class TuningResult:
    """What :func:`search` found. ``best`` is the winner's recipe document (``autotune.load(result.best)``
    or ``result.load()``), ``None`` when nothing fits — then ``binding`` says which limit binds and
    how close the nearest candidate came. ``trials`` holds every trial as a row (a dict)."""

    study: str
    best: dict | None
    front: list[dict]  # recipe documents of the Pareto front, best first ([best] for one objective)
    trials: list[dict]
    baseline: dict | None
    binding: str | None
    interrupted: bool
    db: str  # the database, password hidden
    raw: Any = field(default=None, repr=False)  # autotune.tuner.SearchResult
    run: Any = field(default=None, repr=False)  # autotune.tuner.Search

    @property
    def feasible(self) -> bool:
        return self.best is not None

    def load(self, *, strict: bool = False, device: str | None = None):
        """The winner, loaded with its recipe applied (see :func:`autotune.load`)."""
        if self.best is None:
            raise NoFeasibleRecipe(self.binding or "the search found no recipe")
        from .loader import load

        return load(self.best, strict=strict, device=device)

    def finish_compiles(self, seconds: float | None = None) -> dict | None:
        """With a team compile cache: compile what the search deferred or stopped at its compile cap, in a
        detached process at idle priority, for ``seconds`` at most (default: the search's timeout, else
        600), as ``autotune search`` does after its summary (:mod:`autotune.backfill`). Returns what was
        started (``pid``, ``log``, ``pending``, ``budget_s``), or None when there is nothing to compile."""
        from . import backfill

        if self.run is None or self.interrupted:
            return None
        return backfill.start(self.run.measurer, self.raw.records, seconds)

    def rows(self) -> list[dict]:
        """Trials as flat rows: figures, status, and one ``plugin.option`` column per choice."""
        out = []
        for trial in self.trials:
            row = {k: v for k, v in trial.items() if k not in ("recipe", "output_ids")}
            row.update({f"{p}.{o}": v for p, opts in trial["recipe"].items() for o, v in opts.items()})
            out.append(row)
        return out

    def to_pandas(self):
        """:meth:`rows` as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise AutotuneError("to_pandas() needs pandas: pip install pandas "
                                "(result.trials holds the same rows as dicts)") from None
        return pd.DataFrame(self.rows())


def search_spec(model: str | None = None, *, study_file: str | None = None, workload=None, **given):
    """The :class:`~autotune.spec.SearchSpec` :func:`search` runs: a study file (optional), then the
    given values (``None``: not given)."""
    from .spec import build

    if "study" in given:
        given["study_name"] = given.pop("study")
    return build(study_file, model=model, workload=_workload_fields(workload), **given)


def search(model: str | None = None, *, budget: str | None = None, trials: int | None = None, db: str | None = None,
           workload=None, objective: str | None = None, study_file: str | None = None, pareto: bool | None = None,
           timeout: float | None = None, trial_timeout: float | None = None, sampler: str | None = None,
           study: str | None = None, device: str | None = None, config_only: bool | None = None,
           remeasure: bool = False, price_per_hour: float | None = None, measure: Mapping | None = None,
           space: Mapping | None = None, draft: str | None = None, jobs: int | str | None = None,
           side_by_side: bool | None = None, progress: bool = True, on_status: Callable[[str], None] | None = None) -> TuningResult:
    """Search the plugins' space for the best recipe for ``model`` within ``budget``, measuring every
    candidate, as ``autotune search`` does (same arguments; ``workload`` a dict of prompt_tokens,
    new_tokens, batch_size; ``measure`` overrides the measurement policy and ``space`` restricts the
    search space, ``{"plugin.option": [choices]}``, as a study file's tables do; ``db`` a SQLAlchemy URL;
    ``jobs`` trials side by side, or ``"auto"``, the default; ``side_by_side``: measure the HF default and
    the best again back to back at the end, when the baseline is minutes old — on by default).
    Returns a :class:`TuningResult`; when nothing fits, its ``best`` is ``None`` and ``binding`` says
    why. Raises :class:`~autotune.errors.NoFeasibleRecipe` only when the HF default itself fails."""
    import time

    started = time.monotonic()  # the timeout covers the whole call: its imports and a model's first conversion too
    from . import report_text
    from .registry import get_optimizations
    from .tuner import Search
    from .store import Store

    spec = search_spec(model, study_file=study_file, workload=workload, budget=budget, objective=objective,
                       pareto=pareto, trials=trials, timeout=timeout, trial_timeout=trial_timeout, sampler=sampler,
                       study=study, device=device, config_only=config_only, remeasure=remeasure,
                       price_per_hour=price_per_hour, measure=dict(measure) if measure else None,
                       space=dict(space) if space else None, draft=draft, jobs=jobs, side_by_side=side_by_side)
    store = Store(db)
    run = Search(spec, store, get_optimizations())
    say = on_status or _quiet
    say(f"study {run.study_name}: {spec.source.name} on {spec.target.describe()}; {spec.workload.describe()}")
    say(f"budget: {spec.budget.text}; space: {report_text.space_summary(run.space)}; db: {store.display_url}")
    with report_text.Progress(spec.trials, enabled=progress) as bar:
        raw = run.run(bar, strict=False, started=started)
    return _tuning_result(raw, run, store)


def _tuning_result(raw, run, store) -> TuningResult:
    from . import report_text
    from .export import stored_document

    payload = report_text.search_payload(raw, run)
    front = [stored_document(store, str(r.measurement_id), run.spec.target, run.optimizations) for r in raw.best]
    return TuningResult(study=raw.study_name, best=front[0] if front else None, front=front,
                        trials=payload["trials"], baseline=payload["baseline"], binding=raw.binding,
                        interrupted=raw.interrupted, db=store.display_url, raw=raw, run=run)


# -- bench ---------------------------------------------------------------------------------------
@dataclass
class BenchResult:
    """One recipe measured against the HF default, side by side: ``payload`` is what
    ``autotune bench --json`` prints (``recipe``, every figure, ``baseline``, ``ratio``)."""

    payload: dict

    @property
    def ok(self) -> bool:
        return self.payload["status"] == Status.OK

    @property
    def recipe(self) -> dict:
        return self.payload["recipe"]

    @property
    def baseline(self) -> dict:
        return self.payload["baseline"]

    @property
    def ratio(self) -> dict:
        return self.payload["ratio"]

    def __getitem__(self, key: str):
        return self.payload[key]


def _recipe_input(recipe, optimizations) -> dict:
    """A recipe document (with ``model`` and ``workload``) or ``{"recipe": choices}`` from what a
    caller gives: ``None``, a recipe file path, a recipe document, or ``{plugin: {option: value}}``."""
    from .export import FORMAT, read_recipe_file, validate_document

    if recipe is None:
        return {}
    if isinstance(recipe, Mapping) and recipe.get("format") == FORMAT:
        return validate_document(dict(recipe), optimizations)
    if isinstance(recipe, Mapping):
        return {"recipe": {p: dict(c) if isinstance(c, Mapping) else c for p, c in recipe.items()}}
    return read_recipe_file(str(recipe), optimizations)


def bench(model: str | None = None, recipe=None, *, sets=(), workload=None, device: str | None = None,
          config_only: bool = False, timeout: float | None = None,
          on_status: Callable[[str], None] | None = None) -> BenchResult:
    """Measure one recipe against the HF-default baseline in one run, as ``autotune bench`` does.
    ``recipe``: a recipe file, a recipe document (``result.best``), or ``{plugin: {option: value}}``;
    ``sets``: ``"plugin.option=value"`` strings on top; ``model`` defaults to the document's."""
    from . import report_text
    from .evaluate import evaluate
    from .recipe import parse_sets, resolve
    from .registry import get_optimizations
    from .sources import resolve_model
    from .target import current_target

    optimizations = get_optimizations()
    doc = _recipe_input(recipe, optimizations)
    model = model or doc.get("model")
    if not model:
        raise UsageError("give a MODEL (or a recipe document, which names one)")
    chosen = {p: dict(c) for p, c in doc.get("recipe", {}).items()}
    for plugin, choices in parse_sets(sets, optimizations).items():
        chosen.setdefault(plugin, {}).update(choices)
    resolved = resolve(chosen, optimizations)
    draft = resolved.get("decoding", {}).get("draft")
    if draft:  # a missing draft is a one-line error here, not a failed measurement in a child
        resolve_model(draft, config_only=config_only, tokenizer=False)
    from .workload import Workload

    wl = Workload.from_dict({**doc.get("workload", {}), **_workload_fields(workload)})
    target = current_target(device)
    source = resolve_model(model, config_only=config_only or bool(doc.get("config_only")))
    wl = wl.for_model(source.info(), repr(source.name))
    say = on_status or _quiet
    say(f"target: {target.describe()}; workload: {wl.describe()}")
    say("measuring the HF-default baseline ...")
    baseline = evaluate(source, resolve({}, optimizations), wl, target, optimizations, timeout=timeout)
    say("measuring the recipe ...")
    candidate = evaluate(source, resolved, wl, target, optimizations, baseline=baseline, timeout=timeout)
    return BenchResult(report_text.bench_payload(candidate, baseline, target, wl, source))


# -- verify: the regression gate -----------------------------------------------------------------
@dataclass
class VerifyResult:
    """A stored recipe re-measured on this machine: one :class:`~autotune.budget.Check` per figure;
    ``passed`` when the re-measurement ran and every check holds."""

    measurement_id: int
    model: str
    recipe: dict
    status: str  # of the re-measurement
    error: str | None
    fail_under: float
    stored: dict
    now: dict
    checks: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == Status.OK and all(c.ok for c in self.checks)

    def lines(self) -> list[str]:
        head = (f"recipe {self.measurement_id} ({self.model}): {'PASS' if self.passed else 'FAIL'}"
                f" (speed >= {self.fail_under:g}x stored, quality floors of its budget)")
        if self.status != Status.OK:
            return [head, f"FAIL re-measurement: {self.status}: {self.error}"]
        return [head] + [c.line() for c in self.checks]

    def to_dict(self) -> dict:
        return {"measurement_id": self.measurement_id, "model": self.model, "recipe": self.recipe,
                "passed": self.passed, "status": self.status, "error": self.error, "fail_under": self.fail_under,
                "checks": [c.to_dict() for c in self.checks]}


def _stored_row(store, ref, target):
    from .budget import DEFAULT_QUALITY_FLOOR
    from .store import queries

    if isinstance(ref, int) or str(ref).isdigit():
        return queries.get_measurement(store, int(ref))
    return queries.best_for_model(store, str(ref), target.hardware_key, DEFAULT_QUALITY_FLOOR, target.describe())


def verify(ref, *, fail_under: float | None = None, db: str | None = None, timeout: float | None = None,
           device: str | None = None, on_status: Callable[[str], None] | None = None) -> VerifyResult:
    """Re-measure a stored recipe — ``ref`` a measurement id, or a model name (its best recipe for
    this hardware) — beside the HF default, and hold it to its stored figures: each speed figure
    must keep ``fail_under`` (default 0.95) of its stored speed, each quality floor of the budget it
    was chosen under must still hold. The caller decides what a failure means (the CLI exits 1)."""
    from .budget import DEFAULT_FAIL_UNDER, parse_budget, regression_checks
    from .evaluate import evaluate
    from .figures import Figures
    from .recipe import resolve
    from .registry import get_optimizations
    from .sources import resolve_model
    from .store import Store, queries
    from .target import current_target
    from .workload import Workload

    fail_under = DEFAULT_FAIL_UNDER if fail_under is None else fail_under
    if fail_under <= 0:
        raise UsageError(f"fail_under must be a positive share of the stored speed, got {fail_under!r}")
    store, target, optimizations = Store(db), current_target(device), get_optimizations()
    row = _stored_row(store, ref, target)
    if row.status != Status.OK:
        raise AutotuneError(f"measurement {row.id} did not run successfully ({row.status}): nothing to compare with")
    if row.target.hardware_key != target.hardware_key:
        raise UsageError(f"measurement {row.id} was measured on {row.target.name}, this is {target.describe()}: "
                         "its figures say nothing about this machine")
    source = resolve_model(row.model.name, config_only=row.model.config_only)
    workload = Workload.from_dict(row.workload.definition)
    say = on_status or _quiet
    say(f"measuring the HF-default baseline ({workload.describe()}) ...")
    base = evaluate(source, resolve({}, optimizations), workload, target, optimizations, timeout=timeout)
    say(f"re-measuring recipe {row.id} ...")
    ev = evaluate(source, resolve(row.recipe.recipe, optimizations), workload, target, optimizations,
                  baseline=base, timeout=timeout)
    stored = Figures.from_dict(row.figures)
    checks = []
    if ev.ok:
        budget = parse_budget(queries.study_budget(store, row.study) or "")
        checks = regression_checks(stored, ev.figures, fail_under, budget)
    return VerifyResult(row.id, row.model.name, row.recipe.recipe, ev.status.value, ev.error, fail_under,
                        stored.shown(), ev.figures.shown(), checks)


# -- results that travel -------------------------------------------------------------------------
def _since(since) -> dt.datetime | None:
    if since is None or isinstance(since, dt.datetime):
        return since
    if isinstance(since, dt.date):
        return dt.datetime(since.year, since.month, since.day)
    try:
        when = dt.datetime.fromisoformat(str(since))
    except ValueError:
        raise UsageError(f"--since {since!r} is not a date (YYYY-MM-DD, or YYYY-MM-DDTHH:MM)") from None
    if when.tzinfo is not None:  # the store keeps naive UTC
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def export_results(path: str, *, db: str | None = None, model: str | None = None, since=None) -> int:
    """Write measurements (every status), with their targets, workloads and recipes, to a JSON-lines
    file that :func:`import_results` reads into another database. Returns how many were written."""
    from . import __version__
    from .paths import output_file
    from .store import Store, transfer

    path = str(output_file(path))
    return transfer.export_file(Store(db), path, model=model, since=_since(since), written_by=f"autotune {__version__}")


def import_results(path: str, *, db: str | None = None) -> tuple[int, int]:
    """Add the measurements of an exported file to ``db`` in one transaction, never overwriting:
    one the database already holds (same model, target, workload, recipe, reuse key and status — what
    the search matches on for reuse) is skipped. Returns ``(added, skipped)``."""
    from .store import Store, transfer

    return transfer.import_file(Store(db), path)
