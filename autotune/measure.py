"""Measurement primitives: per-token timing, latency statistics, peak memory, quality."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass


class TimingStreamer:
    """A transformers streamer that timestamps every put: the first put is the prompt, the
    second the first new token (TTFT), the rest one decode step each (TPOT)."""

    def __init__(self, sync=None):
        self.sync = sync
        self.times: list[float] = []
        self.start = time.perf_counter()

    def put(self, value) -> None:
        if self.sync:
            self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    @property
    def ttft(self) -> float:
        return self.times[1] - self.start

    @property
    def tpots(self) -> list[float]:
        return [b - a for a, b in zip(self.times[1:], self.times[2:])]


@dataclass
class Stats:
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    stdev: float

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        v = sorted(values)
        return cls(_pct(v, 50), _pct(v, 90), _pct(v, 95), _pct(v, 99), statistics.fmean(v),
                   statistics.stdev(v) if len(v) > 1 else 0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def _pct(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def cv(values: list[float]) -> float:
    """Coefficient of variation (stdev / mean); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else 0.0


def peak_memory(device: str) -> dict:
    """CUDA: allocator's max allocated / reserved. CPU: this process's peak resident set."""
    if device == "cuda":
        import torch

        return {"peak_memory_bytes": int(torch.cuda.max_memory_reserved()),
                "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved())}
    import resource

    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def reference_pass(applied, reference_text: str, max_tokens: int = 256) -> dict:
    """Teacher-forced pass over the shipped reference text: top-1 prediction at every position
    (compared with the baseline's by the parent) and perplexity."""
    import torch

    tok = applied.tokenizer
    if tok is None:
        return {"top1": [], "perplexity": None}
    ids = tok(reference_text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :max_tokens]
    ids = ids.to(applied.ctx.device)
    with applied.running():
        logits = applied.model(ids, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return {"top1": logits[0].argmax(-1).tolist(), "perplexity": float(torch.exp(nll))}


def token_agreement(candidate: list[int], baseline: list[int]) -> float | None:
    """Share of positions where the candidate's top-1 token equals the baseline's."""
    n = min(len(candidate), len(baseline))
    if n == 0:
        return None
    return sum(a == b for a, b in zip(candidate[:n], baseline[:n])) / n
