"""Evaluate a recipe on a target: check the plugin rules, measure in isolation, score quality
against the baseline measured on the same target and workload."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .isolate import run_isolated
from .measure import token_agreement
from .models import ModelSource
from .optimization import Optimization
from .plugins import plugin_modules
from .recipe import impossible
from .workload import Workload

DEFAULT_TRIAL_TIMEOUT = 900.0


@dataclass
class Evaluation:
    """The outcome of one recipe: ``status`` plus its figures (``result``) or ``error``."""

    recipe: dict
    status: str
    result: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)


def evaluate(source: ModelSource, recipe: dict, workload: Workload, target,
             optimizations: Mapping[str, Optimization], baseline: Evaluation | None = None,
             timeout: float = DEFAULT_TRIAL_TIMEOUT, measure_opts: dict | None = None) -> Evaluation:
    """Measure ``recipe`` (already resolved) unless a plugin rule forbids it on ``target``."""
    reason = impossible(recipe, optimizations, target)
    if reason:
        return Evaluation(recipe, "invalid", error=reason)
    spec = {"model_path": source.path, "recipe": recipe, "workload": workload.to_dict(),
            "device": target.device, "plugin_modules": plugin_modules(), **(measure_opts or {})}
    out = run_isolated(spec, timeout)
    status = out.pop("status")
    if status != "ok":
        return Evaluation(recipe, status, error=out.get("error"))
    out["quality_valid"] = not source.config_only
    if baseline is None:  # this is the baseline: it agrees with itself
        score_quality(out, out)
    elif baseline.ok:
        score_quality(out, baseline.result)
    else:  # nothing to compare with: unknown, not perfect
        out.update(quality=None, perplexity_ratio=None, greedy_match=None)
    return Evaluation(recipe, "ok", out)


def score_quality(result: dict, baseline: dict) -> None:
    """Teacher-forced top-1 agreement and perplexity ratio against the baseline's figures."""
    result["quality"] = token_agreement(result.get("top1", []), baseline.get("top1", []))
    base_ppl, ppl = baseline.get("perplexity"), result.get("perplexity")
    result["perplexity_ratio"] = ppl / base_ppl if ppl and base_ppl else None
    out, base_out = result.get("output_ids", []), baseline.get("output_ids", [])
    result["greedy_match"] = token_agreement(out, base_out)
