"""Writing the tuning database: the rows a search needs, one measurement, a study and its result.
Each function is one unit of work: all of it lands, or nothing does."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import update

from . import tables as t


@dataclass(frozen=True)
class RowIds:
    """The rows a search's measurements hang from."""

    model_id: int
    target_id: int
    workload_id: int


def ensure_rows(store, *, model: str, config_only: bool, target_fingerprint: dict, hardware_key: str,
                versions_key: str, workload_key: str, workload_definition: dict) -> RowIds:
    """Find or add the model, target and workload rows (race-safe across processes)."""
    with store.session() as s:
        return RowIds(t.Model.get_or_create(s, model, config_only).id,
                      t.Target.get_or_create(s, target_fingerprint, hardware_key, versions_key).id,
                      t.Workload.get_or_create(s, workload_key, workload_definition).id)


def key_hash(recipe_key: str) -> str:
    return hashlib.sha256(recipe_key.encode()).hexdigest()


def record_measurement(store, ids: RowIds, *, recipe_key: str, recipe: dict, study: str | None, is_baseline: bool,
                       status: str, error: str | None, figures: dict, reuse_key: str | None,
                       trial_limit_s: float | None) -> t.Measurement:
    """Store one trial's outcome (failed and pruned ones too); returns the detached row."""
    with store.session() as s:
        recipe_row = t.Recipe.get_or_create(s, recipe_key, recipe)
        row = t.Measurement(model_id=ids.model_id, target_id=ids.target_id, workload_id=ids.workload_id,
                            recipe_id=recipe_row.id, study=study, is_baseline=is_baseline, status=status,
                            error=error, figures=figures, reuse_key=reuse_key, trial_limit_s=trial_limit_s,
                            **{c: figures.get(c) for c in t.Measurement.FIGURE_COLUMNS})
        s.add(row)
        s.flush()
        _ = (row.model.name, row.target.fingerprint, row.recipe.recipe, row.workload.definition)
        return row


def ensure_study(store, name: str, ids: RowIds, *, budget: str, objective: str) -> None:
    """Add the study's row unless another process already did."""
    with store.session() as s:
        t.find_or_add(s, t.Study, {"name": name}, model_id=ids.model_id, target_id=ids.target_id,
                      workload_id=ids.workload_id, budget=budget, objective=objective)


def set_study_result(store, name: str, *, best_id: int | None = None, baseline_id: int | None = None) -> None:
    values = {k: v for k, v in (("best_measurement_id", best_id), ("baseline_measurement_id", baseline_id))
              if v is not None}
    if values:
        with store.session() as s:
            s.execute(update(t.Study).where(t.Study.name == name).values(**values))


def mark_stale(store, measurement_id: int) -> None:
    with store.session() as s:
        s.get(t.Measurement, measurement_id).stale = True
