"""Evaluate a recipe on a target: check the plugin rules, measure in isolation, score quality
against the baseline measured on the same target and workload."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .figures import Figures, Key
from .states import Status
from .isolate import run_isolated
from .measure import first_divergence, token_agreement
from .optimization import Optimization
from .recipe import impossible
from .registry import plugin_modules
from .sources import ModelSource
from .spec import BASELINE_TIMEOUT_S, MeasurePolicy
from .trial import TrialRequest
from .workload import Workload


@dataclass
class Evaluation:
    """The outcome of one recipe: its status, its figures (partial unless ok) and any error."""

    recipe: dict
    status: Status
    figures: Figures = field(default_factory=Figures)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


def evaluate(source: ModelSource, recipe: dict, workload: Workload, target,
             optimizations: Mapping[str, Optimization], baseline: Evaluation | None = None,
             timeout: float | None = None, policy: MeasurePolicy | None = None,
             incumbent: Figures | None = None, first_call_cap_s: float | None = None, gate=None,
             compile_cache: str | None = None, compile_artifact: str | None = None,
             greedy_match: bool = True, compile_only: bool = False) -> Evaluation:
    """Measure ``recipe`` (already resolved) unless a plugin rule forbids it on ``target``.
    ``baseline=None`` means this *is* the baseline; ``incumbent``: the best feasible figures so far,
    against which a hopeless candidate is abandoned early; ``first_call_cap_s``: a search's limit on
    compilation (the first call), beyond which the candidate is pruned; ``gate``: an
    :class:`~autotune.isolate.Gate` shared with trials running at the same time; ``compile_cache``: the
    team compile cache's URL, ``compile_artifact`` the artifact of it the database names for this recipe;
    ``greedy_match``: whether a screened candidate's greedy match is wanted (a call of its own);
    ``compile_only``: compile every program and save the artifact to the team cache, measure nothing
    (:mod:`autotune.backfill`): the figures hold the first call's time and the artifact's name."""
    reason = impossible(recipe, optimizations, target, source.info_for(recipe))
    if reason:
        return Evaluation(recipe, Status.INVALID, error=reason)
    policy = policy or MeasurePolicy()
    request = TrialRequest(model_path=source.path, recipe=recipe, workload=workload.to_dict(), device=target.device,
                           policy=policy.to_dict(), plugin_modules=plugin_modules(),
                           incumbent_e2e_s=_typical(incumbent, Key.e2e_ms_p50),
                           incumbent_tpot_s=_typical(incumbent, Key.tpot_ms_p50),
                           incumbent_round_s=_round(incumbent),
                           reference=str(reference_path(source, workload, target)), write_reference=baseline is None and not compile_only,
                           compile_cache=compile_cache, compile_artifact=compile_artifact,
                           greedy_match=greedy_match or baseline is None, compile_only=compile_only)
    outcome = run_isolated(request, timeout or BASELINE_TIMEOUT_S, policy.memory_cap_bytes,
                           None if baseline is None else first_call_cap_s, gate)  # the baseline is never pruned
    figures = outcome.figures
    if outcome.status != Status.OK or compile_only:
        return Evaluation(recipe, outcome.status, figures, outcome.error)
    figures.quality_valid = not source.config_only
    bad_timing = place_on_roofline(figures, target)
    if bad_timing:
        return Evaluation(recipe, Status.INVALID, figures, bad_timing)
    score_quality(figures, baseline.figures if baseline is not None else figures,
                  comparable=baseline is None or baseline.ok)
    return Evaluation(recipe, Status.OK, figures)


def reference_path(source: ModelSource, workload: Workload, target):
    """Where the HF default's next-token distributions at the quality windows are kept, for the KL
    divergence of every candidate measured against it: per model content, workload, hardware and
    library versions."""
    import hashlib

    from .paths import cache_dir

    raw = f"{source.fingerprint}|{workload.key}|{target.hardware_key}|{target.versions_key}"
    return cache_dir() / "reference" / f"{hashlib.sha256(raw.encode()).hexdigest()[:24]}.pt"


def _round(figures: Figures | None) -> float | None:
    """One round of the envelope's shapes (each one's median call summed), in seconds: what a
    candidate's first measured round is screened against. None for figures from before envelopes."""
    if figures is None or not figures.shapes:
        return None
    return sum(s[Key.e2e_ms_p50] for s in figures.shapes) / 1e3


def _typical(figures: Figures | None, key: str) -> float | None:
    """A figure of the typical call (the first timed shape), in seconds: what a candidate's warm-up
    calls of that shape are held to. Figures from before envelopes have the one shape's."""
    if figures is None:
        return None
    value = figures.shapes[0].get(key) if figures.shapes else figures.get(key)
    return value / 1e3 if value else None


def place_on_roofline(figures: Figures, target) -> str | None:
    """Set ``figures.mbu`` from the target's measured bandwidth; a reason when the timing is
    impossible (a decode step faster than memory allows), else None."""
    from . import roofline

    if not figures.bytes_per_step or not figures.tpot_ms_p50:
        return None
    bandwidth = roofline.memory_bandwidth(target.device, target.hardware_key)
    figures.mbu = roofline.mbu(figures.bytes_per_step, figures.tpot_ms_p50 / 1e3, bandwidth)
    if roofline.impossible(figures.mbu, figures.bytes_per_step, figures.tokens_per_step or 1.0):
        # the step or the cached probe is wrong: probe again before blaming the step
        bandwidth = roofline.probe_again(target.device, target.hardware_key)
        figures.mbu = roofline.mbu(figures.bytes_per_step, figures.tpot_ms_p50 / 1e3, bandwidth)
    if roofline.impossible(figures.mbu, figures.bytes_per_step, figures.tokens_per_step or 1.0):
        return (f"invalid measurement: a decode step of {figures.tpot_ms_p50:.2f} ms reads "
                f"{figures.bytes_per_step / 2**20:.0f} MiB, {figures.mbu:.1f}x what this target's memory "
                f"bandwidth ({bandwidth / 1e9:.1f} GB/s) allows")
    return None


def score_quality(figures: Figures, baseline: Figures, comparable: bool = True) -> None:
    """Quality against the baseline's figures: teacher-forced top-1 agreement at every decode step,
    perplexity ratio, free-running greedy agreement and the first divergence. Without a successful
    baseline nothing is comparable: quality is unknown, not perfect."""
    if not comparable:
        figures.quality = figures.perplexity_ratio = figures.greedy_match = figures.first_divergence = None
        figures.kld = None
        return
    figures.quality = token_agreement(figures.top1, baseline.top1)
    if figures.perplexity and baseline.perplexity:
        figures.perplexity_ratio = figures.perplexity / baseline.perplexity
    figures.greedy_match = token_agreement(figures.output_ids, baseline.output_ids)
    figures.first_divergence = first_divergence(figures.output_ids, baseline.output_ids)
