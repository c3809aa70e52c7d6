"""What a measurement says: its :class:`Status` and its :class:`Figures`.

Every figure has its one definition here; text, JSON, export, the report and the store's columns
derive their keys from :class:`Figures` rather than listing them again."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any



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
    first_call_s: float | None = None  # the typical call and every program once: pays compilation
    envelope_pass_s: float | None = None  # then every other shape once (and the widest batch)
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
    #: measured one round only: its first round took longer than the screen factor times the incumbent's
    screened: bool | None = None
    #: new tokens its envelope pass decoded of each long shape, the rest extrapolated from those steps
    #: (a loser on its typical first call: autotune.trial.SAMPLED_DECODE_TOKENS); None: every token
    decode_sampled: int | None = None
    #: the first of its ``runs`` was its envelope pass and warm typical call — or, where quality was
    #: scored (the warm call's tokens forced), a typical call of its own (MeasurePolicy.pass_first):
    #: ``measure_s`` is the rounds after it
    pass_first: bool | None = None
    phase: str | None = None  # the phase a trial ended in when it did not finish (timeout, pruned)
    first_call_cap_s: float | None = None  # the compile cap a trial pruned in its first call ran past
    #: a trial killed at its time limit in its first call: how long that call had run (its compile takes
    #: at least that: a bound in the compile-time history, like ``first_call_cap_s``)
    first_call_past_s: float | None = None
    #: graphs inductor built (FX-graph cache misses): 0 when every compile came from a cache
    graphs_built: int | None = None
    #: the team compile cache: the artifact this trial saved (its SHA-256), and what became of the one
    #: the database named for it ("loaded ...", "refused: ...", "missing: ...", "unreachable: ...")
    compile_artifact: str | None = None
    compile_shared: str | None = None
    #: what autotune.compile_cost predicted for the first call before launching it (None: no history)
    predicted_first_call_s: float | None = None
    # quality against the HF-default baseline, through the served generate path
    quality: float | None = None  # teacher-forced top-1 agreement in decode steps
    perplexity: float | None = None
    perplexity_ratio: float | None = None
    greedy_match: float | None = None  # free-running greedy tokens equal to the baseline's
    kld: float | None = None  # mean KL divergence from the baseline's next-token distribution, forced steps
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

#: the phase of a measurement pruned before it ran, its compile predicted past any cap it could get
DEFERRED = "deferred"


def is_deferred(figures) -> bool:
    """Whether a measurement (its :class:`Figures`, or their dict) is a deferral: it ran nothing."""
    return bool(figures) and figures.get("phase") == DEFERRED


#: the phase of a candidate compiled after its search for the team compile cache (:mod:`autotune.backfill`):
#: its first call's time is a compile's, nothing else was measured
COMPILED_ONLY = "compiled only"


def is_compiled_only(figures) -> bool:
    """Whether a measurement is a compile finished after its search: it stands for no measurement."""
    return bool(figures) and figures.get("phase") == COMPILED_ONLY


class Key:
    """Figure keys by name, for figures held as dicts (stored rows, JSON): ``Key.tpot_ms_p50`` is
    ``"tpot_ms_p50"`` — a misspelt key is an AttributeError, not a figure silently missing."""


for _key in FIGURE_KEYS:
    setattr(Key, _key, _key)


# -- the registry: what each figure means, once ------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """A figure's meaning: its key in :class:`Figures`, its label and unit, which way is better, and
    where it takes part — ``speed`` (a candidate may be abandoned on it, a re-measured recipe is held to
    it: ``gate``), ``objective`` (the ``--objective`` name), ``budget`` (the budget metrics that read
    it), ``show`` (a row of ``autotune show``, with a ratio to the baseline when ``better`` is set)."""

    key: str
    label: str
    unit: str  # ms, s, tok/s, bytes, or "" (a share, a count)
    better: str | None = None  # "lower", "higher", or None (no direction)
    speed: bool = False
    gate: bool = False
    objective: str | None = None
    budget: tuple[str, ...] = ()
    show: bool = False

    @property
    def direction(self) -> str:
        return "maximize" if self.better == "higher" else "minimize"


REGISTRY = (
    Figure("tokens_per_s", "tokens/s", "tok/s", "higher", speed=True, gate=True, objective="throughput",
           budget=("throughput",), show=True),
    Figure("tpot_ms_p50", "TPOT p50 ms", "ms", "lower", speed=True, gate=True, objective="tpot", budget=("tpot_p50",),
           show=True),
    Figure("tpot_ms_p95", "TPOT p95 ms", "ms", "lower", budget=("tpot_p95",)),
    Figure("ttft_ms_p50", "TTFT p50 ms", "ms", "lower", speed=True, gate=True, objective="ttft", budget=("ttft_p50",),
           show=True),
    Figure("ttft_ms_p95", "TTFT p95 ms", "ms", "lower", budget=("ttft_p95",)),
    Figure("e2e_ms_p50", "e2e p50 ms", "ms", "lower", speed=True, objective="e2e", budget=("e2e_p50",)),
    Figure("e2e_ms_p95", "e2e p95 ms", "ms", "lower", budget=("e2e_p95",)),
    Figure("peak_memory_bytes", "peak memory (timed)", "bytes", "lower", objective="memory", budget=("memory",),
           show=True),
    Figure("load_peak_bytes", "peak memory (load)", "bytes", show=True),
    Figure("weights_bytes", "weights", "bytes", show=True),
    Figure("mbu", "MBU (share of memory bandwidth)", "", show=True),
    Figure("tokens_per_step", "tokens per step", "", show=True),
    Figure("compile_s", "compile s (the envelope)", "s", show=True),
    Figure("first_call_s", "first call s", "s", show=True),
    Figure("predicted_first_call_s", "first call predicted s", "s", show=True),
    Figure("graphs_built", "graphs compiled (not cached)", "", show=True),
    Figure("steady_compiles", "compiles in steady state", "", show=True),
    Figure("quality", "quality", "", budget=("quality",), show=True),
    Figure("greedy_match", "greedy match", "", budget=("greedy_match",), show=True),
    Figure("kld", "KL divergence", "", budget=("kld",), show=True),
    Figure("perplexity", "perplexity", "", show=True),
)
FIGURES = {f.key: f for f in REGISTRY}
#: objectives whose candidates can be judged hopeless by their speed alone
SPEED_KEYS = tuple(f.key for f in REGISTRY if f.speed)
#: the figures a re-measured recipe is held to (the regression gate)
GATED = tuple(f for f in REGISTRY if f.gate)
#: the rows of ``autotune show``
SHOWN = tuple(f for f in REGISTRY if f.show)
#: budget metric -> the figure it reads
BUDGET_METRICS = {metric: f for f in REGISTRY for metric in f.budget}
