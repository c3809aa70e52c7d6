"""What a measurement says: its :class:`Status` and its :class:`Figures`.

Every figure has its one definition here; text, JSON, export, the report and the store's columns
derive their keys from :class:`Figures` rather than listing them again."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class Status(str, enum.Enum):
    """How a trial ended. ``ok``: measured; ``pruned``: abandoned early as hopeless (partial figures
    kept); ``invalid``: a plugin rule forbids the combination (never launched); the rest are failures."""

    OK = "ok"
    PRUNED = "pruned"
    INVALID = "invalid"
    ERROR = "error"
    OOM = "oom"
    CRASH = "crash"
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        return self in FAILURES


FAILURES = frozenset({Status.ERROR, Status.OOM, Status.CRASH, Status.TIMEOUT})


@dataclass
class Figures:
    """Figures of one measured recipe. ``None`` means "not measured" (a failed or pruned trial keeps
    what it got before it ended)."""

    # speed over every timed call of every shape of the envelope (the traffic mix: p50 / p95 over all
    # calls, TPOT over all decode steps); tokens/s: all calls' new tokens over their time, median of rounds
    tpot_ms_p50: float | None = None
    tpot_ms_p95: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_p95: float | None = None
    e2e_ms_p50: float | None = None
    e2e_ms_p95: float | None = None
    tokens_per_s: float | None = None
    runs: int | None = None  # measured rounds (each times one call of every shape)
    cv: float | None = None  # coefficient of variation of a round's time over the measured rounds
    noisy: bool | None = None  # the CV target was missed at the repeat cap: treat ratios with care
    # memory: the steady-state peak while the timed runs ran (what the budget checks), the peak while
    # loading, and the bytes of the weights as stored after quantization
    peak_memory_bytes: int | None = None
    load_peak_bytes: int | None = None
    weights_bytes: int | None = None
    # the memory roofline: bytes one decode step reads (weights as stored + KV so far, at the
    # workload's mean context), output tokens per forward pass (above 1 when proposals are accepted),
    # and MBU = bytes per step / TPOT / the target's measured read bandwidth
    bytes_per_step: int | None = None
    tokens_per_step: float | None = None
    mbu: float | None = None
    # where the trial's time went (seconds)
    load_s: float | None = None
    first_call_s: float | None = None  # the first warm-up call: pays compilation
    compile_s: float | None = None  # the first and second calls of every shape beyond two steady-state ones
    #: compilations (dynamo graphs, ahead-of-time programs) during the measured calls: 0 in a recipe that
    #: serves its envelope without compiling in steady state
    steady_compiles: int | None = None
    warmup_s: float | None = None
    measure_s: float | None = None  # the measured window
    quality_s: float | None = None
    wall_s: float | None = None  # the whole trial as the parent saw it: spawn, imports, everything
    #: of wall_s, stopped while another trial of the search measured, or waiting to measure alone
    #: (searches running trials side by side, ``--jobs``); already taken out of the figures above
    paused_s: float | None = None
    #: trials the search ran side by side when this one was measured (None: alone). Its timed
    #: window ran alone, but its load and first call shared the CPU with the others' compiles
    lanes: int | None = None
    phase: str | None = None  # the phase a trial ended in when it did not finish (timeout, pruned)
    first_call_cap_s: float | None = None  # the compile cap a trial pruned in its first call ran past
    # quality against the HF-default baseline, through the served generate path
    quality: float | None = None  # teacher-forced top-1 agreement in decode steps
    perplexity: float | None = None
    perplexity_ratio: float | None = None
    greedy_match: float | None = None  # free-running greedy tokens equal to the baseline's
    first_divergence: int | None = None  # index of the first greedy token that differs (None: none)
    quality_valid: bool | None = None  # False for config-only (random-weight) models
    #: per timed shape: prompt_tokens, new_tokens, tokens_per_s, ttft_ms_p50, tpot_ms_p50, e2e_ms_p50
    shapes: list[dict] = field(default_factory=list)
    # raw material the parent scores against the baseline's (not shown)
    top1: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)

    RAW = ("top1",)  # kept in the store for scoring; never exported or shown

    def to_dict(self) -> dict[str, Any]:
        """Every figure that was measured (``None`` and empty lists left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != []}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Figures":
        """From stored or received data; keys this version does not know are ignored (older rows)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def exported(self) -> dict[str, Any]:
        """What a recipe document and JSON output carry."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RAW}

    def shown(self) -> dict[str, Any]:
        """What text and tables show: no token lists."""
        return {k: v for k, v in self.exported().items() if k != "output_ids"}

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        return default if value is None else value


FIGURE_KEYS = tuple(f.name for f in fields(Figures))
