"""Measurement primitives: per-token timing, latency statistics, memory, and quality through the
served generate path."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass


class TimingStreamer:
    """A transformers streamer that timestamps every put: the first put is the prompt, the
    second brings the first new token(s) (TTFT), each later one a decode step. A step may bring
    several tokens per sequence (prompt lookup, assisted decoding put ``[1, k]``): its time is shared
    among them, so TPOT stays time per output token.

    On CUDA each put records an event on the stream instead of synchronising: our decode loops
    never wait for the GPU between tokens (the CPU runs ahead, launching the next step), and a
    synchronise per token would time a loop production never runs. The events are read once the
    call has finished. Only a call with ``tpot_limit_s`` synchronises per token, to judge its steps
    as they come: once ``SETTLE`` decode steps have passed (the first may compile) and five more
    were timed, a median step slower than the limit calls ``on_slow(tpot, limit, step)`` (which raises,
    to stop a hopeless candidate mid-call)."""

    SETTLE = 3

    def __init__(self, cuda: bool = False, tpot_limit_s: float | None = None, on_slow=None):
        self.limit, self.on_slow = tpot_limit_s, on_slow
        self.sync = None
        self._events: list | None = None
        if cuda:
            import torch

            self.sync = torch.cuda.synchronize
            if tpot_limit_s is None:
                self._events = []
                self._start_event = torch.cuda.Event(enable_timing=True)
                self._start_event.record()
        self._times: list[float] = []
        self.tokens: list[int] = []  # tokens per sequence each put brought
        self.start = time.perf_counter()

    def put(self, value) -> None:
        if self._events is not None:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append(event)
        else:
            if self.sync:
                self.sync()
            self._times.append(time.perf_counter())
        count = len(self._events) if self._events is not None else len(self._times)
        # the prompt and multi-token steps come as [batch, k]; one-token steps as [batch]
        self.tokens.append(int(value.shape[-1]) if count > 1 and value.dim() == 2 else 1)
        if self.limit is not None and len(self._times) >= self.SETTLE + 5:
            recent = statistics.median(self.tpots[self.SETTLE:][-5:])
            if recent > self.limit:
                self.on_slow(recent, self.limit, len(self._times) - 2)

    def end(self) -> None:
        pass

    @property
    def times(self) -> list[float]:
        """Each put's moment on the ``perf_counter`` clock (read from the CUDA events, which waits for
        the last one, when events were recorded)."""
        if self._events:
            self._events[-1].synchronize()
            return [self.start + self._start_event.elapsed_time(e) / 1e3 for e in self._events]
        return self._times

    @property
    def ttft(self) -> float:
        return self.times[1] - self.start

    @property
    def tpots(self) -> list[float]:
        """Time per output token after the first put of new tokens. One token per step: each step's
        time. When some step brought several (accepted proposals), steps are bursty — a 10-token step
        yields ten tiny figures that would drag any percentile far below what the call delivered — so
        every token gets the call's mean: decode time over the tokens it produced."""
        times = self.times
        gaps = [b - a for a, b in zip(times[1:], times[2:])]
        counts = self.tokens[2:]
        if all(k == 1 for k in counts):
            return gaps
        mean = sum(gaps) / sum(counts)
        return [mean] * sum(counts)

    @property
    def steps(self) -> int:
        """Forward passes after the first new token (each put is one)."""
        return max(0, len(self.tokens) - 2)


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


def compile_count() -> int:
    """Compilations in this process so far: graphs dynamo compiled, CUDA graphs recorded (inductor counts
    each recording's non-static inputs: a shape's first call runs, its second records, later ones
    replay), and ahead-of-time programs autotune's engines built (a recipe serving its envelope in
    steady state adds none)."""
    import sys

    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is None:
        return _packages_built()
    counters = dynamo.counters
    return (int(counters["stats"]["unique_graphs"]) + int(counters["inductor"]["cudagraph_recorded_non_static_inputs"])
            + _packages_built())


def graphs_built() -> int:
    """Graphs inductor built in this process (its FX-graph cache's misses) and AOTInductor packages it
    compiled: 0 when every compile was served from a cache, local or the team's."""
    import sys

    dynamo = sys.modules.get("torch._dynamo.utils")
    return (0 if dynamo is None else int(dynamo.counters["inductor"]["fxgraph_cache_miss"])) + _packages_built()


def _packages_built() -> int:
    """AOTInductor packages autotune's engines compiled in this process (none where the engine is not loaded)."""
    import sys

    engines = sys.modules.get("autotune.engines.aoti")
    return 0 if engines is None else engines.AheadOfTimeLoop.compiled_packages


# -- memory ------------------------------------------------------------------------------------
class MemoryMeter:
    """This process's own memory. CPU: the kernel's resident-set high-water mark (``VmHWM``), reset
    through ``/proc/self/clear_refs`` before the timed runs, so the figure is the steady-state peak
    of this child — not its parent's (``ru_maxrss`` survives ``exec``: a spawned child would report
    whatever its parent peaked at). CUDA: the caching allocator's peaks, reset likewise."""

    def __init__(self, device: str):
        self.device = device

    def release_freed(self) -> None:
        """Give freed heap back to the OS (glibc keeps it otherwise), so load-time garbage — the
        float copy a quantizer made — is not counted as the steady state."""
        import gc

        gc.collect()
        if self.device == "cuda":  # the caching allocator keeps freed blocks reserved: hand them back
            import torch

            torch.cuda.empty_cache()
            return
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass

    def peak(self) -> int | None:
        if self.device == "cuda":
            import torch

            return int(torch.cuda.max_memory_reserved())
        return _status_bytes("VmHWM")

    def reset(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current resident set
        except OSError as exc:
            raise RuntimeError(f"cannot reset this process's memory high-water mark: {exc}") from None

    def extra(self) -> dict:
        if self.device != "cuda":
            return {}
        import torch

        return {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated())}


def _status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tensor_bytes(t) -> int:
    """Bytes a tensor holds, looking inside tensor subclasses (torchao's quantized weights keep
    their int data and scales as inner tensors)."""
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ not in ("Tensor", "Parameter"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weights_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as stored (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total


# -- quality -----------------------------------------------------------------------------------
def reference_windows(token_ids: list[int], context: int, forced: int, count: int) -> list[tuple[list, list]]:
    """``count`` (context, continuation) windows from the reference text's tokens, one after the
    other (wrapping around a short text), each exactly ``context`` + ``forced`` tokens long."""
    if not token_ids:
        return []
    need = (context + forced) * count
    ids = (token_ids * (need // len(token_ids) + 1))[:need]
    size = context + forced
    return [(ids[i * size:i * size + context], ids[i * size + context:(i + 1) * size]) for i in range(count)]


def forcing_processor(forced):
    """A logits processor that records the model's own top-1 and the log-likelihood of the reference
    token at every generated position, then forces the reference token. Run through the recipe's
    generate path it scores every decode step exactly as served: through its KV cache, its compiled
    forward or decode step, its generate wrapper.

    Positions are read from the sequence length, not counted: a path that verifies several proposed
    tokens per forward pass (prompt lookup) scores a position again after a rejected proposal, and
    the last score of each position — the one on the accepted prefix — is the one kept."""
    import torch
    from transformers import LogitsProcessor

    class Force(LogitsProcessor):
        def __init__(self):
            self.prompt: int | None = None
            self.by_position: dict[int, tuple] = {}

        def __call__(self, input_ids, scores):
            if self.prompt is None:
                self.prompt = input_ids.shape[1]
            step = input_ids.shape[1] - self.prompt
            target = forced[:, step].to(scores.device)
            logp = torch.log_softmax(scores.float(), dim=-1)
            self.by_position[step] = (scores.argmax(-1).cpu(), -logp.gather(-1, target[:, None])[:, 0].cpu(),
                                      logp.to(torch.float16).cpu())
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(-1, target[:, None], 0.0)

        @property
        def top1(self) -> list:
            return [self.by_position[i][0] for i in sorted(self.by_position)]

        @property
        def nll(self) -> list:
            return [self.by_position[i][1] for i in sorted(self.by_position)]

        @property
        def logp(self) -> list:
            """The next-token log-probabilities at each position, ``[batch, vocab]`` (float16)."""
            return [self.by_position[i][2] for i in sorted(self.by_position)]

    return Force()


def kl_divergence(reference, candidate) -> float:
    """Mean over positions of KL(reference || candidate), both ``[positions, vocab]`` log-probabilities
    (as llama.cpp's quantization tables report it): what the candidate loses of the reference's
    next-token distribution, which top-1 agreement alone hides (an answer that flips at a near tie)."""
    import torch

    ref, cand = reference.float(), candidate.float()
    p = ref.exp()
    # a token both ruled out (-inf: EOS under min_new_tokens) adds nothing, not 0 * (inf - inf)
    terms = torch.where(p > 0, p * (ref - cand), torch.zeros_like(p))
    return float(terms.sum(-1).mean())


def token_agreement(candidate: list[int], baseline: list[int]) -> float | None:
    """Share of positions where the candidate's token equals the baseline's."""
    n = min(len(candidate), len(baseline))
    if n == 0:
        return None
    return sum(a == b for a, b in zip(candidate[:n], baseline[:n])) / n


def first_divergence(candidate: list[int], baseline: list[int]) -> int | None:
    """Index of the first token that differs (None when they agree over their common length)."""
    return next((i for i, (a, b) in enumerate(zip(candidate, baseline)) if a != b), None)
