"""Reading the tuning database. Every function takes the :class:`~autotune.store.Store` and plain
values and returns rows detached from their session, with the relationships callers read loaded."""
from __future__ import annotations

from sqlalchemy import select

from ..errors import NotFoundError
from ..states import Status
from . import tables as t


def _loaded(row: t.Measurement) -> t.Measurement:
    _ = (row.model.name, row.target.fingerprint, row.recipe.recipe, row.workload.definition)
    return row


def list_measurements(store, hardware_key: str | None, model: str | None = None,
                      include_failed: bool = False) -> list[t.Measurement]:
    """Measurements on this hardware (``hardware_key=None``: any), best first: successful ones by
    tokens/s, then the rest."""
    with store.session() as s:
        q = select(t.Measurement).join(t.Target).join(t.Model)
        if hardware_key is not None:
            q = q.where(t.Target.hardware_key == hardware_key)
        if model:
            q = q.where(t.Model.name == model)
        if not include_failed:
            q = q.where(t.Measurement.status == Status.OK.value)
        rows = [_loaded(r) for r in s.scalars(q)]
    return sorted(rows, key=lambda r: (r.status != Status.OK, -(r.tokens_per_s or 0)))


def get_measurement(store, measurement_id: int) -> t.Measurement:
    """One measurement, with ``baseline_figures``: the figures of the baseline its ratios use (its
    study's baseline, else the latest successful baseline on the same model, target and workload)."""
    with store.session() as s:
        row = s.get(t.Measurement, measurement_id)
        if row is None:
            raise NotFoundError(f"no measurement with id {measurement_id} in {store.display_url}")
        _loaded(row)
        base = None
        if row.study:
            study = s.scalar(select(t.Study).where(t.Study.name == row.study))
            if study is not None and study.baseline_measurement_id:
                base = s.get(t.Measurement, study.baseline_measurement_id)
        base = base or t.Measurement.baseline_for(s, row.model, row.target, row.workload)
        row.baseline_figures = dict(base.figures) if base is not None else None
        return row


def by_ids(store, ids) -> dict[int, t.Measurement]:
    """Measurements by id, in one query."""
    ids = list(ids)
    if not ids:
        return {}
    with store.session() as s:
        return {r.id: _loaded(r) for r in s.scalars(select(t.Measurement).where(t.Measurement.id.in_(ids)))}


def _kind(workload: t.Workload) -> str:
    return (workload.definition or {}).get("kind", "chat")


def best_for_model(store, model: str, hardware_key: str, quality_floor: float, describe_target: str = "",
                   workload_kind: str | None = None) -> t.Measurement:
    """The best recipe known for ``model`` on this hardware class (and, given one, this workload
    kind): a study's chosen recipe when one exists, else the fastest successful measurement at or
    above the quality floor."""
    with store.session() as s:
        chosen = s.scalars(
            select(t.Measurement).join(t.Study, t.Study.best_measurement_id == t.Measurement.id)
            .join(t.Target, t.Measurement.target_id == t.Target.id).join(t.Model, t.Measurement.model_id == t.Model.id)
            .where(t.Model.name == model, t.Target.hardware_key == hardware_key, t.Measurement.stale.is_(False))
            .order_by(t.Measurement.tokens_per_s.desc())).all()
        chosen_id = next((c.id for c in chosen if workload_kind is None or _kind(c.workload) == workload_kind), None)
    if chosen_id is not None:
        return get_measurement(store, chosen_id)
    rows = [r for r in list_measurements(store, hardware_key, model)
            if not r.stale and (r.model.config_only or (r.quality or 0) >= quality_floor)
            and (workload_kind is None or _kind(r.workload) == workload_kind)]
    if not rows:
        kind = f" for the {workload_kind} workload" if workload_kind else ""
        raise NotFoundError(f"no recipe for {model!r}{kind} measured on this hardware "
                            f"({describe_target or hardware_key}) in {store.display_url}")
    return get_measurement(store, rows[0].id)


def previous(store, model_id: int, target_id: int, workload_id: int, recipe_key_hash: str,
             reuse_key: str) -> list[t.Measurement]:
    """Earlier measurements of exactly this configuration under the same reuse key, newest first
    (rule-pruned ones left out: they measured nothing)."""
    with store.session() as s:
        q = (select(t.Measurement).join(t.Recipe)
             .where(t.Measurement.model_id == model_id, t.Measurement.target_id == target_id,
                    t.Measurement.workload_id == workload_id, t.Recipe.key_hash == recipe_key_hash,
                    t.Measurement.reuse_key == reuse_key, t.Measurement.status != Status.INVALID.value)
             .order_by(t.Measurement.id.desc()))
        return [_loaded(r) for r in s.scalars(q)]


def find_study(store, ref: str, hardware_key: str) -> t.Study:
    """A study by job id, study name, or model name (its latest study on this hardware)."""
    with store.session() as s:
        if ref.isdigit():
            job = s.get(t.Job, int(ref))
            if job is not None:
                ref = job.study_name
        study = s.scalar(select(t.Study).where(t.Study.name == ref))
        if study is None:
            study = s.scalar(select(t.Study).join(t.Model).join(t.Target, t.Study.target_id == t.Target.id)
                             .where(t.Model.name == ref, t.Target.hardware_key == hardware_key)
                             .order_by(t.Study.id.desc()))
        if study is None:
            raise NotFoundError(f"no study, job or model {ref!r} with results on this hardware")
        _ = (study.model.name, study.target.fingerprint, study.workload.definition)
        return study


def chosen_with_other_versions(store, hardware_key: str, versions_key: str) -> list[t.Measurement]:
    """Chosen recipes of this hardware class measured with other library versions, not yet stale."""
    with store.session() as s:
        q = (select(t.Measurement).join(t.Study, t.Study.best_measurement_id == t.Measurement.id)
             .join(t.Target, t.Measurement.target_id == t.Target.id)
             .where(t.Target.hardware_key == hardware_key, t.Target.versions_key != versions_key,
                    t.Measurement.stale.is_(False)))
        return [_loaded(r) for r in s.scalars(q).unique()]


def study_budget(store, name: str | None) -> str | None:
    """The budget text a study was run with (``None``: no such study here, e.g. imported rows)."""
    if not name:
        return None
    with store.session() as s:
        return s.scalar(select(t.Study.budget).where(t.Study.name == name))


def compile_history(store, limit: int = 5000):
    """Every measured first call the database holds (newest ``limit``), as
    :class:`autotune.compile_cost.Past` rows: a compile stopped at a cap counts as at least the cap, one
    killed at its time limit in its first call as at least the time it had run;
    a deferred one (never launched), a rule-pruned one (never compiled) and one that loaded the team
    compile cache's artifact (compiled nothing) are left out."""
    from ..compile_cost import Past
    from ..compile_share import loaded
    from ..figures import is_deferred

    with store.session() as s:
        q = (select(t.Measurement.id, t.Measurement.model_id, t.Measurement.is_baseline, t.Measurement.figures,
                    t.Target.hardware_key, t.Target.versions_key, t.Recipe.recipe)
             .join(t.Target, t.Measurement.target_id == t.Target.id).join(t.Recipe)
             .where(t.Measurement.status != Status.INVALID.value)
             .order_by(t.Measurement.id.desc()).limit(limit))
        rows = s.execute(q).all()
    sizes: dict[int, float] = {}
    for r in rows:
        if r.is_baseline and (r.figures or {}).get("weights_bytes"):
            sizes.setdefault(r.model_id, float(r.figures["weights_bytes"]))
    out = []
    for r in rows:
        f = r.figures or {}
        if is_deferred(f) or loaded(f.get("compile_shared")):
            continue  # never launched; or its first call loaded the team's compiled artifact: no compile's time
        # stopped at a cap, or killed at its time limit in its first call (a compile after the search
        # that ran out of its time: the README job's compiled generate, 239 s): a bound, not a time
        bound = f.get("first_call_cap_s") or f.get("first_call_past_s")
        censored = bound is not None
        if censored and (f.get("lanes") or 1) > 1:
            continue  # stopped while sharing the CPU with other trials: no bound on a compile alone
        seconds = bound if censored else f.get("first_call_s")
        if seconds is None:
            continue
        out.append(Past(r.id, r.model_id, r.hardware_key, r.versions_key, r.recipe, float(seconds), censored,
                        sizes.get(r.model_id)))
    return out


def compile_artifact(store, model_id: int, hardware_key: str, versions_key: str, recipe_key_hash: str) -> str | None:
    """The newest team-cache artifact a measurement of this recipe and model saved on this hardware
    class and library versions (any workload: other shapes' graphs only add cache entries)."""
    with store.session() as s:
        q = (select(t.Measurement.figures).join(t.Recipe).join(t.Target, t.Measurement.target_id == t.Target.id)
             .where(t.Measurement.model_id == model_id, t.Target.hardware_key == hardware_key,
                    t.Target.versions_key == versions_key, t.Recipe.key_hash == recipe_key_hash)
             .order_by(t.Measurement.id.desc()))
        for figures in s.scalars(q):
            if (figures or {}).get("compile_artifact"):
                return figures["compile_artifact"]
    return None
