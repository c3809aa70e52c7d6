"""The tuning database's tables (prefixed ``autotune_`` so Optuna's tables can share the database).

The store knows rows, not the domain: it takes and returns plain values (keys, dicts, JSON)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from ..states import OPEN_JOB_STATES, JobState, Status, WorkerState


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


def find_or_add(s: Session, cls, unique: dict, **extra):
    """The row of ``cls`` whose ``unique`` columns equal these values, added (with ``extra``) if
    absent. Race-safe: ``INSERT ... ON CONFLICT DO NOTHING`` then a read, so when another process
    adds the same row between our look and our insert, we read theirs instead of failing."""
    row = s.scalar(select(cls).filter_by(**unique))
    if row is not None:
        return row
    dialect = s.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(cls)
        s.execute(insert.values(**unique, **extra).on_conflict_do_nothing())
    else:  # other databases: a savepoint, and the other process's row on a conflict
        try:
            with s.begin_nested():
                s.add(cls(**unique, **extra))
        except IntegrityError:
            pass
    return s.scalar(select(cls).filter_by(**unique))


class Model(Base):
    __tablename__ = "autotune_models"
    __table_args__ = (UniqueConstraint("name", "config_only"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(500))
    config_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @classmethod
    def get_or_create(cls, s: Session, name: str, config_only: bool) -> "Model":
        return find_or_add(s, cls, {"name": name, "config_only": config_only})


class Target(Base):
    __tablename__ = "autotune_targets"
    __table_args__ = (UniqueConstraint("hardware_key", "versions_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hardware_key: Mapped[str] = mapped_column(String(32), index=True)
    versions_key: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @classmethod
    def get_or_create(cls, s: Session, fingerprint: dict, hardware_key: str, versions_key: str) -> "Target":
        return find_or_add(s, cls, {"hardware_key": hardware_key, "versions_key": versions_key},
                           device=fingerprint["device"], name=fingerprint["name"], fingerprint=fingerprint)


class Workload(Base):
    __tablename__ = "autotune_workloads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)
    definition: Mapped[dict] = mapped_column("spec", JSON)  # autotune.workload.Workload.to_dict()

    @classmethod
    def get_or_create(cls, s: Session, key: str, definition: dict) -> "Workload":
        return find_or_add(s, cls, {"key": key}, definition=definition)


class Recipe(Base):
    __tablename__ = "autotune_recipes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    recipe: Mapped[dict] = mapped_column(JSON)

    @classmethod
    def get_or_create(cls, s: Session, key: str, recipe: dict) -> "Recipe":
        """``key``: the recipe's canonical text (equal recipes, equal keys)."""
        import hashlib

        return find_or_add(s, cls, {"key_hash": hashlib.sha256(key.encode()).hexdigest()}, key=key, recipe=recipe)


class Measurement(Base):
    """One measured (or pruned) recipe on one target and workload: every trial, failed ones too."""

    __tablename__ = "autotune_measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("autotune_models.id"), index=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("autotune_targets.id"), index=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("autotune_workloads.id"))
    recipe_id: Mapped[int] = mapped_column(ForeignKey("autotune_recipes.id"))
    study: Mapped[str | None] = mapped_column(String(300), index=True)
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # autotune.states.Status values
    error: Mapped[str | None] = mapped_column(Text)
    #: what else must match for this measurement to stand for a new one: measurement policy, model
    #: content, autotune's and the plugins' versions (the target and workload have their own columns)
    reuse_key: Mapped[str | None] = mapped_column(String(64), index=True)
    #: the wall-clock limit the trial ran under (a timeout at 1 s says nothing about 240 s)
    trial_limit_s: Mapped[float | None] = mapped_column(Float)
    tpot_ms_p50: Mapped[float | None] = mapped_column(Float)
    ttft_ms_p50: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[float | None] = mapped_column(Float)
    quality: Mapped[float | None] = mapped_column(Float)
    figures: Mapped[dict] = mapped_column(JSON, default=dict)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    model: Mapped[Model] = relationship()
    target: Mapped[Target] = relationship()
    workload: Mapped[Workload] = relationship()
    recipe: Mapped[Recipe] = relationship()

    #: figures copied into their own columns (indexed, sortable); the rest live in ``figures``
    FIGURE_COLUMNS = ("tpot_ms_p50", "ttft_ms_p50", "tokens_per_s", "peak_memory_bytes", "quality")

    @classmethod
    def baseline_for(cls, s: Session, model: Model, target: Target, workload: Workload):
        return s.scalar(select(cls).where(cls.model_id == model.id, cls.target_id == target.id,
                                          cls.workload_id == workload.id, cls.is_baseline.is_(True),
                                          cls.status == Status.OK.value).order_by(cls.id.desc()).limit(1))


class Study(Base):
    """A search: its budget and objective, so reports and resumes know what was asked."""

    __tablename__ = "autotune_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("autotune_models.id"))
    target_id: Mapped[int] = mapped_column(ForeignKey("autotune_targets.id"))
    workload_id: Mapped[int] = mapped_column(ForeignKey("autotune_workloads.id"))
    budget: Mapped[str] = mapped_column(Text)
    objective: Mapped[str] = mapped_column(String(100))
    best_measurement_id: Mapped[int | None] = mapped_column(ForeignKey("autotune_measurements.id"))
    #: the HF-default measurement every ratio of this study is computed against
    baseline_measurement_id: Mapped[int | None] = mapped_column(ForeignKey("autotune_measurements.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    model: Mapped[Model] = relationship()
    target: Mapped[Target] = relationship()
    workload: Mapped[Workload] = relationship()


class Job(Base):
    """A queued tuning job: a study spec, the hardware it must run on, and its :class:`JobState`."""

    __tablename__ = "autotune_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(500))
    search_spec: Mapped[dict] = mapped_column("spec", JSON)  # autotune.spec.SearchSpec.to_dict()
    hardware: Mapped[dict] = mapped_column(JSON)
    study_name: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.QUEUED.value)
    trials_planned: Mapped[int] = mapped_column(Integer)
    submitted_from: Mapped[str] = mapped_column(String(200))
    best_measurement_id: Mapped[int | None] = mapped_column(ForeignKey("autotune_measurements.id"))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    OPEN = OPEN_JOB_STATES


class Worker(Base):
    """One daemon worker process: where it runs, what it works on, when it last beat."""

    __tablename__ = "autotune_workers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    hardware_key: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("autotune_jobs.id"))
    state: Mapped[str] = mapped_column(String(16), default=WorkerState.IDLE.value)
    current: Mapped[str | None] = mapped_column(Text)
    trials_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
