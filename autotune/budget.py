"""The budget grammar and the objectives.

    budget   := limit ("," limit)*
    limit    := metric op number [unit]
    metric   := ttft_p50 | ttft_p95 | tpot_p50 | tpot_p95 | e2e_p50 | e2e_p95   (units ms | s; default ms)
              | memory                                                          (units B | KiB | MiB | GiB | KB | MB | GB)
              | quality                                                         (0..1 top-1 agreement; ">=" only)
              | greedy_match                                                    (0..1 greedy tokens equal; ">=" only)
              | kld                                                             (nats, mean KL divergence; "<=" only)
              | throughput                                                      (tokens/s; ">=" only)
    op       := "<=" | ">="

Example: ``tpot_p50<=25ms,memory<=4GiB,quality>=0.97``. Without a quality limit, quality>=0.95
applies (teacher-forced top-1 token agreement with the HF-default baseline, in decode steps through
the recipe's own generate path).

The :class:`Budget` owns its verdicts: which limits a candidate misses, and — when nothing fits —
which limit binds and how close the nearest candidate came.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import BudgetError
from .figures import BUDGET_METRICS, GATED, REGISTRY

DEFAULT_QUALITY_FLOOR = 0.95
GRAMMAR = ("budget grammar: METRIC<=VALUE[UNIT] or METRIC>=VALUE, comma-separated; metrics: ttft_p50, ttft_p95, "
           "tpot_p50, tpot_p95, e2e_p50, e2e_p95 (ms|s), memory (B|KiB|MiB|GiB|KB|MB|GB), quality (0..1), "
           "greedy_match (0..1), kld (nats, <= only), "
           "throughput (tok/s); e.g. \"tpot_p50<=25ms,memory<=4GiB,quality>=0.97\"")

#: budget metric -> figure key, for the latencies (ms or s)
LATENCY = {metric: f.key for metric, f in BUDGET_METRICS.items() if f.unit == "ms"}
MEMORY_UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
TIME_UNITS = {"ms": 1.0, "s": 1000.0}
#: floors between 0 and 1 (quality limits: they mean nothing for a config-only model)
QUALITY_KEYS = ("quality", "greedy_match")
#: ceilings on a divergence from the baseline (a quality limit too)
DIVERGENCE_KEYS = ("kld",)
LIMIT = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=)\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z/]*)\s*$")

#: objective name -> (result key, direction)
OBJECTIVES = {f.objective: (f.key, f.direction) for f in REGISTRY if f.objective}
# at a fixed price per hour, cost per output token falls exactly as tokens/s rises: the same search as
# throughput, reported in dollars (see cost_per_mtok)
OBJECTIVES["cost"] = OBJECTIVES["throughput"]


@dataclass(frozen=True)
class Limit:
    metric: str  # as written: tpot_p50, memory, ...
    key: str  # result key it reads
    op: str
    value: float  # in the result key's unit (ms, bytes, ratio, tokens/s)

    @property
    def needs_real_weights(self) -> bool:
        """Quality limits mean nothing for a config-only (random-weight) model."""
        return self.key in QUALITY_KEYS + DIVERGENCE_KEYS

    def violation(self, figures) -> float | None:
        """Optuna constraint value: <= 0 when met, positive by how much it is missed (relative)."""
        got = figures.get(self.key)
        if got is None or got != got:  # missing, or NaN (no figure at all): it misses
            return None
        scale = abs(self.value) or 1.0
        return (got - self.value) / scale if self.op == "<=" else (self.value - got) / scale

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{format_value(self.key, self.value)}"


def format_value(key: str, value: float) -> str:
    if key == BUDGET_METRICS["memory"].key:
        for unit in ("GiB", "MiB", "KiB"):
            if value >= MEMORY_UNITS[unit.lower()]:
                return f"{value / MEMORY_UNITS[unit.lower()]:.2f} {unit}"
        return f"{value:.0f} B"
    if key.endswith(("_p50", "_p95")):
        return f"{value:.1f} ms"
    if key in DIVERGENCE_KEYS:
        return f"{value:.4f}"
    if key == BUDGET_METRICS["throughput"].key:
        return f"{value:.1f} tok/s"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Budget:
    limits: tuple[Limit, ...]
    text: str

    @property
    def quality_floor(self) -> float | None:
        return next((lim.value for lim in self.limits if lim.key == "quality"), None)

    def applicable(self, figures) -> list[Limit]:
        """The limits that apply to these figures (quality limits only where quality is valid)."""
        return [lim for lim in self.limits if not (lim.needs_real_weights and figures.get("quality_valid") is False)]

    def violations(self, figures) -> dict[str, float]:
        """Every applicable limit's Optuna constraint value (a figure that is missing misses by 1.0)."""
        out = {}
        for lim in self.applicable(figures):
            v = lim.violation(figures)
            out[str(lim)] = v if v is not None else 1.0
        return out

    def missed(self, figures) -> list[str]:
        """The limits these figures miss, as written (``tpot_p50<=25.0 ms``)."""
        return [name for name, v in self.violations(figures).items() if v > 0]

    def feasible(self, figures) -> bool:
        return not self.missed(figures)

    def explain_miss(self, candidates: Iterable[tuple[str, Any]]) -> str:
        """Why nothing fits: for each limit every candidate misses, the nearest candidate and its
        figure; else the candidate that misses least, and what it misses. ``candidates`` are
        ``(label, figures)`` of successfully measured recipes."""
        ok = list(candidates)
        if not ok:
            return "no candidate was measured successfully"
        parts = []
        for lim in self.limits:
            scored = [(lim.violation(f), label, f) for label, f in ok
                      if lim in self.applicable(f) and lim.violation(f) is not None]
            if scored and all(v > 0 for v, _, _ in scored):
                _, label, f = min(scored, key=lambda t: t[0])
                parts.append(f"{lim.metric}: nearest candidate {format_value(lim.key, f.get(lim.key))} "
                             f"{'>' if lim.op == '<=' else '<'} {format_value(lim.key, lim.value)} ({label})")
        if not parts:  # every limit is met by someone, never all by one candidate
            label, f = min(ok, key=lambda c: sum(max(0.0, v) for v in self.violations(c[1]).values()))
            parts.append(f"no candidate meets all limits at once; nearest ({label}) misses "
                         f"{', '.join(self.missed(f))}")
        return "no candidate meets the budget: " + "; ".join(parts)


#: ``autotune verify --fail-under``'s default: a re-measured recipe may lose 5% of its stored speed
DEFAULT_FAIL_UNDER = 0.95
#: the speed figures a re-measured recipe is held to: (figure, higher is better)
SPEED_CHECKS = tuple((f.key, f.better == "higher") for f in GATED)


@dataclass(frozen=True)
class Check:
    """One figure of a re-measured recipe against its stored value (speed) or a floor (quality)."""

    figure: str
    stored: float | None
    now: float | None
    rule: str  # ">=0.95x stored" or "quality>=0.950"
    ok: bool
    ratio: float | None = None  # speed now / speed stored (latencies inverted: > 1 is faster)

    def line(self) -> str:
        shown = lambda v: "-" if v is None else format_value(self.figure, v)  # noqa: E731
        ratio = f" = {self.ratio:.2f}x" if self.ratio is not None else ""
        return (f"{'PASS' if self.ok else 'FAIL'} {self.figure}: stored {shown(self.stored)}, now "
                f"{shown(self.now)}{ratio} (needs {self.rule})")

    def to_dict(self) -> dict:
        return {"figure": self.figure, "stored": self.stored, "now": self.now, "ratio": self.ratio,
                "rule": self.rule, "ok": self.ok}


def regression_checks(stored, now, fail_under: float, budget: "Budget") -> list[Check]:
    """A re-measured recipe against its stored figures: each speed figure must keep at least
    ``fail_under`` of its stored speed, and each quality floor of ``budget`` must still hold (a figure
    that was not measured now fails; quality floors do not apply to config-only models)."""
    checks = []
    for key, higher in SPEED_CHECKS:
        old, new = stored.get(key), now.get(key)
        if old is None:  # nothing stored to compare with (an older row): not a claim we can check
            continue
        ratio = None if not new or not old else (new / old if higher else old / new)
        checks.append(Check(key, old, new, f">={fail_under:g}x stored", ratio is not None and ratio >= fail_under,
                            ratio))
    for lim in budget.applicable(now):
        if lim.needs_real_weights:
            missed = lim.violation(now)
            checks.append(Check(lim.key, stored.get(lim.key), now.get(lim.key), str(lim),
                                missed is not None and missed <= 0))
    return checks


def cost_per_mtok(tokens_per_s: float | None, price_per_hour: float | None) -> float | None:
    """US dollars per million output tokens on a machine that costs ``price_per_hour``."""
    if not tokens_per_s or price_per_hour is None:
        return None
    return price_per_hour / 3600.0 / tokens_per_s * 1e6


def parse_budget(text: str | None, *, default_quality: bool = True) -> Budget:
    limits: list[Limit] = []
    for part in [p for p in (text or "").split(",") if p.strip()]:
        limits.append(_parse_limit(part))
    if default_quality and not any(lim.key == "quality" for lim in limits):
        limits.append(Limit("quality", "quality", ">=", DEFAULT_QUALITY_FLOOR))
    return Budget(tuple(limits), ",".join(str(lim) for lim in limits))


def _parse_limit(part: str) -> Limit:
    m = LIMIT.match(part)
    if not m:
        raise BudgetError(f"cannot read {part.strip()!r}; {GRAMMAR}")
    metric, op, number, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4).lower()
    if metric in LATENCY:
        if unit not in ("", *TIME_UNITS):
            raise BudgetError(f"{metric} takes ms or s, not {unit!r}; {GRAMMAR}")
        return Limit(metric, LATENCY[metric], op, number * TIME_UNITS.get(unit or "ms"))
    if metric == "memory":
        if unit not in MEMORY_UNITS:
            raise BudgetError(f"memory needs a unit (B, KiB, MiB, GiB, KB, MB, GB), got {unit or 'none'!r}; {GRAMMAR}")
        return Limit(metric, BUDGET_METRICS[metric].key, op, number * MEMORY_UNITS[unit])
    if metric in QUALITY_KEYS:
        if op != ">=" or unit or not 0 <= number <= 1:
            raise BudgetError(f"{metric} is a floor between 0 and 1 ({metric}>=0.97); {GRAMMAR}")
        return Limit(metric, metric, op, number)
    if metric in DIVERGENCE_KEYS:
        if op != "<=" or unit:
            raise BudgetError(f"{metric} is a ceiling in nats ({metric}<=0.01); {GRAMMAR}")
        return Limit(metric, metric, op, number)
    if metric == "throughput":
        if op != ">=" or unit not in ("", "tok/s"):
            raise BudgetError(f"throughput is a floor in tokens/s (throughput>=40); {GRAMMAR}")
        return Limit(metric, BUDGET_METRICS[metric].key, op, number)
    raise BudgetError(f"unknown metric {metric!r}; {GRAMMAR}")


def parse_objectives(objective: str, pareto: bool) -> list[tuple[str, str]]:
    """``--objective tpot`` -> [(key, direction)]; ``--pareto`` defaults to tpot and memory, or
    takes a comma list (``--objective tpot,memory --pareto``)."""
    names = [n.strip() for n in objective.split(",") if n.strip()]
    if pareto and len(names) < 2:
        names = [names[0] if names else "tpot", "memory"]
        if names[0] == "memory":
            names = ["memory", "tpot"]
    if not pareto and len(names) != 1:
        raise BudgetError("several objectives need --pareto")
    for n in names:
        if n not in OBJECTIVES:
            raise BudgetError(f"unknown objective {n!r}; choose from {', '.join(OBJECTIVES)}")
    return [OBJECTIVES[n] for n in names]
