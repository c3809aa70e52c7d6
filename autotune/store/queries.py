"""Read-side queries: recipes best first, one measurement as a recipe document, best known recipe."""
from __future__ import annotations

from sqlalchemy import select

from ..budget import DEFAULT_QUALITY_FLOOR
from ..errors import NotFoundError
from ..export import recipe_document, validate_document
from . import models as m


def list_measurements(store, target, model: str | None = None, all_targets: bool = False,
                      include_failed: bool = False) -> list[m.Measurement]:
    """Measurements, best first: successful ones by tokens/s, then the rest."""
    with store.session() as s:
        q = select(m.Measurement).join(m.Target).join(m.Model)
        if not all_targets:
            q = q.where(m.Target.hardware_key == target.hardware_key)
        if model:
            q = q.where(m.Model.name.in_([model, f"{model} [config-only]"]))
        if not include_failed:
            q = q.where(m.Measurement.status == "ok")
        rows = list(s.scalars(q))
        for r in rows:  # load what callers read after the session closes
            _ = (r.model.name, r.target.name, r.recipe.recipe, r.workload.spec)
    return sorted(rows, key=lambda r: (r.status != "ok", -(r.tokens_per_s or 0)))


def get_measurement(store, measurement_id: int) -> m.Measurement:
    with store.session() as s:
        row = s.get(m.Measurement, measurement_id)
        if row is None:
            raise NotFoundError(f"no recipe with id {measurement_id} in {store.display_url}")
        _ = (row.model.name, row.target.fingerprint, row.recipe.recipe, row.workload.spec)
        base = m.Measurement.baseline_for(s, row.model, row.target, row.workload)
        row.baseline_figures = dict(base.figures) if base is not None else None
        return row


def document(row: m.Measurement) -> dict:
    return recipe_document(
        model=row.model.name.removesuffix(" [config-only]"), config_only=row.model.config_only,
        recipe=row.recipe.recipe, workload=row.workload.spec, target=row.target.fingerprint,
        figures=row.figures or {}, baseline=getattr(row, "baseline_figures", None), measurement_id=row.id,
        study=row.study)


def best_for_model(store, model: str, target, quality_floor: float = DEFAULT_QUALITY_FLOOR) -> m.Measurement:
    """The best recipe known for ``model`` on this hardware class: a study's chosen recipe when
    one exists, else the fastest successful measurement above the quality floor."""
    with store.session() as s:
        chosen = s.scalars(
            select(m.Measurement).join(m.Study, m.Study.best_measurement_id == m.Measurement.id)
            .join(m.Target, m.Measurement.target_id == m.Target.id).join(m.Model, m.Measurement.model_id == m.Model.id)
            .where(m.Model.name == model, m.Target.hardware_key == target.hardware_key,
                   m.Measurement.stale.is_(False))
            .order_by(m.Measurement.tokens_per_s.desc())).first()
        chosen_id = chosen.id if chosen is not None else None
    if chosen_id is not None:
        return get_measurement(store, chosen_id)
    rows = [r for r in list_measurements(store, target, model)
            if not r.stale and (r.model.config_only or (r.quality or 0) >= quality_floor)]
    if not rows:
        raise NotFoundError(f"no recipe for {model!r} measured on this hardware ({target.describe()}) "
                            f"in {store.display_url}")
    return get_measurement(store, rows[0].id)


def document_for(store, ref: str, target, optimizations) -> dict:
    """A recipe document from a stored id or a model name (best known for this hardware)."""
    if ref.isdigit():
        row = get_measurement(store, int(ref))
    else:
        row = best_for_model(store, ref, target)
    if row.status != "ok":
        raise NotFoundError(f"recipe {row.id} did not run successfully ({row.status}): nothing to load")
    return validate_document(document(row), optimizations, where=f"stored recipe {row.id}")
