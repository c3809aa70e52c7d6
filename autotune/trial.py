"""One trial, inside its own process: load, apply, warm up with the measured shapes, measure until
stable, score quality through the served path.

The two warm-up calls *are* quality calls: each prefills part of the shipped reference text and is
forced through its continuation, with exactly the measured shapes (the first pays compilation). So
quality costs one extra call, not three, and nothing is compiled twice.

Runs in a spawned child (see :mod:`autotune.isolate`); takes a :class:`TrialRequest` and returns
plain data. Each phase is announced through ``on_phase`` so that a trial killed at its time limit
says where it was."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from . import measure, roofline
from .figures import Figures, Status
from .paths import use_persistent_compile_cache
from .workload import Workload, shipped_text


@dataclass
class TrialRequest:
    """Everything the child needs, as plain data."""

    model_path: str
    recipe: dict
    workload: dict
    device: str
    policy: dict  # autotune.spec.MeasurePolicy.to_dict()
    plugin_modules: list[str] = field(default_factory=list)
    #: the best feasible candidate so far: a warm call (e2e) or decode step (TPOT) slower than
    #: ``policy.abandon_factor`` times these abandons the trial (status pruned); None: never
    incumbent_e2e_s: float | None = None
    incumbent_tpot_s: float | None = None


@dataclass
class Outcome:
    """What the child sends back."""

    status: Status
    figures: Figures
    error: str | None = None


class Abandoned(Exception):
    """A warm call or decode step was far slower than the incumbent: not worth measuring to the end."""


@dataclass
class Limits:
    """When to abandon a trial, in seconds (None: never)."""

    e2e_s: float | None = None
    tpot_s: float | None = None

    @classmethod
    def of(cls, request: TrialRequest, factor: float) -> "Limits":
        """``factor`` times the incumbent's figures; none with ``factor`` 0 (never abandon)."""
        if not factor:
            return cls()
        return cls(request.incumbent_e2e_s and factor * request.incumbent_e2e_s,
                   request.incumbent_tpot_s and factor * request.incumbent_tpot_s)


def run_trial(request: TrialRequest, on_phase: Callable[[str], None] = lambda phase: None) -> Outcome:
    """Measure one recipe; phases: load, first call, warm-up, measure, quality."""
    from .spec import MeasurePolicy

    use_persistent_compile_cache()
    policy = MeasurePolicy.from_dict(request.policy)
    figures = Figures()
    on_phase("load")
    run = _Run.prepare(request, figures, policy)
    try:
        on_phase("first call")
        run.warm_up(figures, Limits.of(request, policy.abandon_factor), on_phase)
        on_phase("measure")
        run.measure(figures, policy)
        if run.quality is not None:
            on_phase("quality")
            run.quality.finish(figures)
    except Abandoned as exc:
        figures.phase = "warm-up"
        return Outcome(Status.PRUNED, figures, str(exc))
    return Outcome(Status.OK, figures)


class _Run:
    """The applied recipe and its fixed-shape inputs, with one method per phase."""

    def __init__(self, applied, workload: Workload, input_ids, device: str, quality: bool):
        self.applied, self.workload, self.input_ids, self.device = applied, workload, input_ids, device
        self.memory = measure.MemoryMeter(device)
        self.quality = _Quality(applied, workload) if quality and applied.tokenizer is not None else None
        self.sync = None
        if device == "cuda":
            import torch

            self.sync = torch.cuda.synchronize

    @classmethod
    def prepare(cls, request: TrialRequest, figures: Figures, policy) -> "_Run":
        from .apply import apply_recipe
        from .optimization import ApplyContext
        from .registry import get_optimizations, use_exactly
        from .target import current_target

        use_exactly(request.plugin_modules)
        optimizations = get_optimizations()
        workload = Workload.from_dict(request.workload)
        target = current_target(request.device)
        ctx = ApplyContext(target, request.device, workload.new_tokens, workload.prompt_tokens,
                           workload.batch_size, request.recipe)
        t0 = time.perf_counter()
        applied = apply_recipe(request.model_path, optimizations, request.recipe, ctx)
        figures.load_s = time.perf_counter() - t0
        model = applied.model
        input_ids = workload.input_ids(applied.tokenizer, model.config.get_text_config().vocab_size)
        run = cls(applied, workload, input_ids, request.device, policy.quality)
        run.memory.release_freed()
        figures.load_peak_bytes = run.memory.peak()
        figures.weights_bytes = measure.weights_bytes(model)
        return run

    def one_call(self, limits: Limits | None = None, call: int | None = None):
        """One timed generate call with exactly the workload's shapes: (output ids, streamer, e2e s).
        ``call``: a quality call (its reference window) instead of the workload's prompts."""
        streamer = measure.TimingStreamer(self.device == "cuda", limits and limits.tpot_s, on_slow=_abandon_tpot)
        inputs, extra = self.input_ids, {}
        if call is not None:
            inputs, extra = self.quality.inputs(call)
        out = self.applied.generate_ids(inputs, max_new_tokens=self.workload.new_tokens, streamer=streamer,
                                        min_new_tokens=self.workload.new_tokens, **extra)
        if self.sync:
            self.sync()
        e2e = time.perf_counter() - streamer.start
        if call is not None:
            self.quality.check(call, out)
        return out, streamer, e2e

    def warm_up(self, figures: Figures, limits: Limits, on_phase) -> None:
        """Two calls with exactly the measured shapes — the quality calls, when quality is scored;
        the first pays compilation. A decode step slower than ``limits.tpot_s`` (after the first
        few, which may compile) or a second call slower than ``limits.e2e_s`` abandons the trial,
        keeping the figures so far."""
        calls = (0, 1) if self.quality is not None else (None, None)
        # the first call's steps may still compile, load kernels, pack weights: only a pathological
        # one (FIRST_CALL_SLACK times the warm limit) stops it
        first = Limits(tpot_s=limits.tpot_s and FIRST_CALL_SLACK * limits.tpot_s)
        figures.first_call_s = self.one_call(first, calls[0])[2]
        on_phase("warm-up")
        second = self.one_call(limits, calls[1])[2]
        figures.warmup_s = second
        figures.e2e_ms_p50 = second * 1e3
        if limits.e2e_s is not None and second > limits.e2e_s:
            raise Abandoned(f"a warm call took {second:.2f} s, beyond the {limits.e2e_s:.2f} s limit "
                            f"derived from the incumbent")

    def measure(self, figures: Figures, policy) -> None:
        """Repeat until the e2e CV is under target (after min_runs) or a cap is reached; the memory
        high-water mark covers exactly these calls."""
        self.memory.release_freed()
        self.memory.reset()
        runs = []
        start = time.perf_counter()
        while len(runs) < policy.max_runs:
            runs.append(self.one_call())
            e2es = [r[2] for r in runs]
            if len(runs) >= policy.min_runs and (measure.cv(e2es) <= policy.target_cv
                                                  or time.perf_counter() - start > policy.max_measure_s):
                break
        figures.measure_s = time.perf_counter() - start
        figures.peak_memory_bytes = self.memory.peak()
        out = runs[-1][0]
        prompt = self.input_ids.shape[1]
        if out.shape[1] - prompt != self.workload.new_tokens:
            raise RuntimeError(f"generated {out.shape[1] - prompt} tokens, the workload asks for exactly "
                               f"{self.workload.new_tokens}")
        e2e = measure.Stats.of([r[2] for r in runs])
        ttft = measure.Stats.of([r[1].ttft for r in runs])
        tpot = measure.Stats.of([t for r in runs for t in r[1].tpots])
        figures.runs = len(runs)
        figures.cv = measure.cv([r[2] for r in runs])
        figures.noisy = figures.cv > policy.target_cv
        figures.ttft_ms_p50, figures.ttft_ms_p95 = ttft.p50 * 1e3, ttft.p95 * 1e3
        figures.tpot_ms_p50, figures.tpot_ms_p95 = tpot.p50 * 1e3, tpot.p95 * 1e3
        figures.e2e_ms_p50, figures.e2e_ms_p95 = e2e.p50 * 1e3, e2e.p95 * 1e3
        figures.tokens_per_s = self.workload.batch_size * self.workload.new_tokens / e2e.p50
        figures.compile_s = max(0.0, figures.first_call_s + figures.warmup_s - 2 * e2e.p50)
        figures.output_ids = out[:, prompt:].flatten().tolist()
        steps = sum(r[1].steps for r in runs)
        figures.tokens_per_step = sum(len(r[1].tpots) for r in runs) / steps if steps else None
        figures.bytes_per_step = roofline.bytes_per_step(self.applied.model, self.workload.batch_size,
                                                         prompt + self.workload.new_tokens / 2)



def _abandon_tpot(tpot: float, limit: float) -> None:
    raise Abandoned(f"decode steps took {tpot * 1e3:.1f} ms, beyond the {limit * 1e3:.1f} ms limit derived from "
                    f"the incumbent")


class _Quality:
    """Teacher-forced top-1 and log-likelihood at every decode step, through the recipe's own
    generate path and cache, with the measured shapes: each call prefills ``prompt_tokens`` of the
    shipped reference text and is forced through its next ``new_tokens``. The parent compares the
    top-1s with the baseline's."""

    def __init__(self, applied, workload: Workload):
        import torch

        ids = applied.tokenizer(shipped_text("reference.txt"), add_special_tokens=False)["input_ids"]
        windows = measure.reference_windows(ids, workload.prompt_tokens, workload.new_tokens,
                                            QUALITY_CALLS * workload.batch_size)
        b = workload.batch_size
        self.calls = [(torch.tensor([c for c, _ in windows[i * b:(i + 1) * b]]),
                       torch.tensor([f for _, f in windows[i * b:(i + 1) * b]])) for i in range(QUALITY_CALLS)]
        self.applied, self.workload = applied, workload
        self.forcers: dict[int, object] = {}
        self.seconds = 0.0

    def inputs(self, call: int):
        context, forced = self.calls[call]
        self.forcers[call] = measure.forcing_processor(forced)
        return context, {"logits_processor": _processors(self.forcers[call])}

    def check(self, call: int, out) -> None:
        import torch

        if not torch.equal(out[:, self.workload.prompt_tokens:].cpu(), self.calls[call][1]):
            raise RuntimeError("the recipe's generate path ignored logits_processor: quality cannot be "
                               "scored through it")

    def finish(self, figures: Figures) -> None:
        """The calls not yet made as warm-ups, then the figures."""
        import torch

        start = time.perf_counter()
        for call in range(QUALITY_CALLS):
            if call not in self.forcers:
                context, extra = self.inputs(call)
                out = self.applied.generate_ids(context, max_new_tokens=self.workload.new_tokens,
                                                min_new_tokens=self.workload.new_tokens, **extra)
                self.check(call, out)
        top1, nll = [], []
        for call in range(QUALITY_CALLS):
            force = self.forcers[call]
            top1 += torch.stack(force.top1, 1).flatten().tolist()
            nll += torch.stack(force.nll, 1).flatten().tolist()
        figures.top1 = top1
        figures.perplexity = float(torch.tensor(nll).mean().exp())
        figures.quality_s = time.perf_counter() - start


#: how much slower than the warm limit a decode step of the first (compiling) call may be
FIRST_CALL_SLACK = 10.0

#: generate calls quality is scored on (each with the workload's batch of reference windows); the
#: first two are the warm-up calls
QUALITY_CALLS = 3


def _processors(*processors):
    from transformers import LogitsProcessorList

    return LogitsProcessorList(processors)
