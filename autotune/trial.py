"""One trial, inside its own process: load, apply, warm up with the measured shapes, measure until
stable, score quality through the served path.

The two warm-up calls *are* quality calls: each prefills part of the shipped reference text and is
forced through its continuation, with exactly the measured shapes (the first pays compilation). So
quality costs one extra call, not three, and nothing is compiled twice.

Runs in a spawned child (see :mod:`autotune.isolate`); takes a :class:`TrialRequest` and returns
plain data. Each phase is announced through ``on_phase`` so that a trial killed at its time limit
says where it was."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from . import measure, roofline
from .figures import Figures, Key
from .states import Status
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
    #: the incumbent's round (one call per shape, medians summed): a first measured round slower than
    #: ``policy.screen_factor`` times it ends the measurement there (screened)
    incumbent_round_s: float | None = None
    #: the baseline's next-token distributions at the quality windows' positions (a file): the baseline
    #: writes it (``write_reference``), a candidate scores its KL divergence against it
    reference: str | None = None
    write_reference: bool = False
    #: the team compile cache (autotune.compile_share): its URL, and the artifact the database names for
    #: this recipe (loaded, verified, before the first call); the trial saves its own after its warm-up
    compile_cache: str | None = None
    compile_artifact: str | None = None
    #: a candidate screened on its envelope pass (its typical calls were forced, for quality) gets a
    #: free-running greedy call of its own, for ``greedy_match``, only where this says the figure is
    #: wanted (the baseline's reference; a budget that names it): it was ~40 s of the README job's 600
    greedy_match: bool = True
    #: compile and save only (:mod:`autotune.backfill`): the first calls and the warm-up, with no limits,
    #: the compiled artifact saved to the team cache; nothing measured
    compile_only: bool = False


@dataclass
class Outcome:
    """What the child sends back."""

    status: Status
    figures: Figures
    error: str | None = None


class Hopeless(Exception):
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


def run_trial(request: TrialRequest, on_phase: Callable[[str], None] = lambda phase: None,
              shared_cpu: bool = False) -> Outcome:
    """Measure one recipe; phases: load, first call, warm-up, measure, quality. ``shared_cpu``: the
    first calls run beside other trials (a lane of a search whose timed windows run alone): their
    steps' times then say nothing of the recipe, so only the warm calls (alone) may judge it hopeless."""
    from .spec import MeasurePolicy

    if request.compile_only:  # a compile for the team measures nothing: it must not slow what does, wherever
        # it runs (after a search, or in an idle daemon worker beside another's trials)
        from .isolate.process import idle_priority

        idle_priority()
    use_persistent_compile_cache()
    policy = MeasurePolicy.from_dict(request.policy)
    figures = Figures()
    if request.compile_cache and request.compile_artifact:
        from .compile_share import load_into_torch

        figures.compile_shared = load_into_torch(request.compile_cache, request.compile_artifact)
    on_phase("load")
    run = _Run.prepare(request, figures, policy)
    limits = Limits.of(request, policy.abandon_factor)
    incumbent = request.incumbent_round_s
    screen_s = incumbent and policy.screen_factor and policy.screen_factor * incumbent
    # alone, with the incumbent's round to screen against, a candidate past the abandon limit in its warm
    # call has paid for the envelope pass already: that call runs to its end and the pass gives it figures
    # (screened) where abandoning it left none (README job: 5 of 12 trials, 21-42 s each, taught nothing)
    screen_first = bool(screen_s) and not shared_cpu and not request.compile_only
    if request.compile_only:  # every program once, to its end: nothing is judged
        limits = Limits()
    try:
        on_phase("first call")
        # a typical first call that compiled nothing and ran past the screen already shows a loser: its
        # long shapes' decode is sampled (:data:`SAMPLED_DECODE_TOKENS`), their prompts timed whole
        run.first_calls(figures, Limits() if shared_cpu else limits, on_phase,
                        sample_beyond=screen_first and request.incumbent_e2e_s
                        and policy.screen_factor * request.incumbent_e2e_s or None)
        on_phase("warm-up")
        beyond = run.warm_up(figures, limits, keep=screen_first)
        figures.graphs_built = measure.graphs_built()
        if request.compile_only:
            _save_compiled(request, figures)
            return Outcome(Status.OK, figures)
        on_phase("measure")
        if not ((screen_first and run.screen_on_first_pass(figures, policy, 0.0 if beyond else screen_s))
                or (policy.pass_round and run.pass_as_round(figures, policy))):
            run.measure(figures, policy, screen_s, incumbent and policy.race_factor and policy.race_factor * incumbent,
                        pass_first=policy.pass_first and not shared_cpu)
        # after the timed calls: the memory high-water mark of a round that began with the envelope pass
        # must not hold the artifact's bytes (the packages read into memory to be bundled)
        _save_compiled(request, figures)
        if run.quality is not None:
            on_phase("quality")
            run.quality.finish(figures)
    except Hopeless as exc:
        figures.phase = "warm-up"
        return Outcome(Status.PRUNED, figures, str(exc))
    return Outcome(Status.OK, figures)


def _save_compiled(request: TrialRequest, figures: Figures) -> None:
    """The compiled programs to the team compile cache, where one is configured (every program of the
    envelope is compiled by now)."""
    if request.compile_cache:
        from .compile_share import save_from_torch

        figures.compile_artifact = save_from_torch(request.compile_cache)


class _Run:
    """The applied recipe and the workload's calls over its envelope, with one method per phase."""

    def __init__(self, applied, workload: Workload, device: str, quality: bool):
        self.applied, self.workload, self.device = applied, workload, device
        vocab = applied.model.config.get_text_config().vocab_size
        #: (prompt tokens, new tokens, input ids) of each timed shape, the typical call first
        self.shapes = [(p, n, workload.input_ids(applied.tokenizer, vocab, prompt_tokens=p))
                       for p, n in workload.shapes()]
        self.wide = None  # a call at the envelope's max_batch, when wider than the typical call
        if workload.max_batch > workload.batch_size:
            self.wide = workload.input_ids(applied.tokenizer, vocab, batch=workload.max_batch)
        self.sampling = workload.generate_kwargs()
        self.memory = measure.MemoryMeter(device)
        self.quality = _Quality(applied, workload) if quality and applied.tokenizer is not None else None
        self.sync = None
        self.first_pass: list = []  # the envelope pass's calls (every shape but the typical), and whether
        self.first_pass_compiled = True  # anything compiled in them; the warm typical call, likewise
        self.warm_call, self.warm_compiled = None, True
        self.plain_typical = None  # a typical call of its own where the warm one scored quality (plain_call),
        self.plain_compiled = False  # and whether something compiled in it
        self.extrapolated_s = 0.0  # decode time the envelope pass's sampled calls extrapolated (sampled_call)
        self.calls = 0  # timed calls so far: each sampled call draws from its own seed
        self.greedy_match = True  # a screened candidate's greedy reference is wanted (TrialRequest.greedy_match)
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
        ctx = ApplyContext.of(current_target(request.device), workload, request.recipe, request.device)
        t0 = time.perf_counter()
        applied = apply_recipe(request.model_path, optimizations, request.recipe, ctx)
        figures.load_s = time.perf_counter() - t0
        run = cls(applied, workload, request.device, policy.quality)
        run.greedy_match = request.greedy_match
        if run.quality is not None:
            run.quality.reference, run.quality.write_reference = request.reference, request.write_reference
        run.memory.release_freed()
        figures.load_peak_bytes = run.memory.peak()
        figures.weights_bytes = measure.weights_bytes(applied.model)
        return run

    def one_call(self, shape: int = 0, limits: Limits | None = None, call: int | None = None, ids=None,
                 new_tokens: int | None = None):
        """One timed generate call of shape ``shape`` (an index into :attr:`shapes`), with the
        envelope's sampling: (output ids, streamer, e2e s). ``call``: a quality call (its reference
        window, greedy and forced) instead; ``ids``: other inputs (the envelope's widest call);
        ``new_tokens``: fewer new tokens than the shape's (an untimed check, or :meth:`sampled_call`)."""
        import torch

        streamer = measure.TimingStreamer(self.device == "cuda", limits and limits.tpot_s,
                                          on_slow=_abandon_tpot(measure.compile_count()))
        prompt, new, inputs = self.shapes[shape]
        new = new_tokens or new
        extra = dict(self.sampling)
        if call is not None:
            inputs, extra = self.quality.inputs(call)
        elif ids is not None:
            inputs = ids
        if extra.get("do_sample"):
            torch.manual_seed(self.calls)
        self.calls += 1
        out = self.applied.generate_ids(inputs, max_new_tokens=new, streamer=streamer, min_new_tokens=new, **extra)
        if self.sync:
            self.sync()
        e2e = time.perf_counter() - streamer.start
        if out.shape[1] - inputs.shape[1] != new:
            raise RuntimeError(f"generated {out.shape[1] - inputs.shape[1]} tokens, the workload asks for exactly {new}")
        if call is not None:
            self.quality.check(call, out)
        return out, streamer, e2e

    def first_calls(self, figures: Figures, limits: Limits, on_phase=lambda phase: None,
                    sample_beyond: float | None = None) -> None:
        """The typical call (as quality call 0, when quality is scored) and every program of the
        recipe's engine once: the compilation, which the search's compile cap bounds (``first_call_s``).
        Then, as the "envelope pass", every other shape once and the envelope's widest batch: what
        compiling left to pay, and the uncompiled cost of long prompts, which no cap should count as
        compilation. A pathological decode step (``FIRST_CALL_SLACK`` times the warm limit) stops it.
        A typical call that compiled nothing and took longer than ``sample_beyond`` seconds marks a
        loser: the pass decodes :data:`SAMPLED_DECODE_TOKENS` of each shape's new tokens
        (:meth:`sampled_call`)."""
        first = Limits(tpot_s=limits.tpot_s and FIRST_CALL_SLACK * limits.tpot_s)
        start = time.perf_counter()
        compiles = measure.compile_count()
        typical = self.one_call(0, first, 0 if self.quality is not None else None)
        if self.quality is not None:
            self.quality.check_finite(0)
        loser = bool(sample_beyond) and typical[2] > sample_beyond and measure.compile_count() == compiles
        self.applied.warm_up()
        figures.first_call_s = time.perf_counter() - start
        on_phase("envelope pass")
        if self.wide is not None:
            # untimed: where nothing compiled for the typical call, nothing will for the wide batch either,
            # and its prompt pass and first decode step show the batch runs (its 64 tokens were 3-8 s of an
            # eager trial, README job); a compiling engine's decode steps compile for it
            compiled = measure.compile_count() != compiles
            self.one_call(0, ids=self.wide, new_tokens=None if compiled else WIDE_CHECK_TOKENS)
        # from here on the memory high-water mark covers what a round serves: a candidate screened on this
        # pass (:meth:`screen_on_first_pass`) reports it
        self.memory.release_freed()
        self.memory.reset()
        compiles = measure.compile_count()
        self.first_pass = [self.sampled_call(shape) if loser else self.one_call(shape)
                           for shape in range(1, len(self.shapes))]
        self.first_pass_compiled = measure.compile_count() != compiles
        figures.envelope_pass_s = time.perf_counter() - start - figures.first_call_s

    def sampled_call(self, shape: int):
        """One call of ``shape`` decoding :data:`SAMPLED_DECODE_TOKENS` of its new tokens, read as the
        whole call: its prompt (TTFT) timed whole, its decode steps repeated in turn over the tokens not
        decoded (the steps of one shape run at near the same position), so its end-to-end time, its
        share of the traffic mix's TPOT and its tokens per step count every new token
        (:class:`_Extended`). A shape with no more new tokens than that, or a call whose tokens came
        in fewer than two timed steps (a draft accepted whole), runs whole."""
        new = self.shapes[shape][1]
        if new <= SAMPLED_DECODE_TOKENS:
            return self.one_call(shape)
        out, streamer, e2e = self.one_call(shape, new_tokens=SAMPLED_DECODE_TOKENS)
        if len(streamer.tpots) < 2:
            return self.one_call(shape)
        extended = _Extended(streamer, new - SAMPLED_DECODE_TOKENS)
        self.extrapolated_s += extended.rest_s
        return out, extended, e2e + extended.rest_s

    def warm_up(self, figures: Figures, limits: Limits, keep: bool = False) -> bool:
        """The typical call again, warm (as quality call 1): a typical call or decode step slower than
        ``limits`` abandons the trial, keeping the figures so far — or, with ``keep``, the call runs to
        its end and this returns True (the candidate is beyond the limits: the caller screens it on the
        envelope pass). The other shapes ran warm in the envelope pass (after the engine's own warm-up): a
        second pass of them would only repeat their longest calls (a 2,000-token prompt's was ~15% of a
        trial's time)."""
        compiles = measure.compile_count()
        self.warm_call = self.one_call(0, Limits(e2e_s=limits.e2e_s) if keep else limits,
                                       1 if self.quality is not None else None)
        self.warm_compiled = measure.compile_count() != compiles
        second = self.warm_call[2]
        figures.e2e_ms_p50 = second * 1e3
        # judged on evidence: a call that compiled is not a call that decodes (its time says nothing)
        beyond = limits.e2e_s is not None and second > limits.e2e_s and not self.warm_compiled
        if beyond and not keep:
            raise Hopeless(f"its warm typical call took {second:.2f} s, beyond the {limits.e2e_s:.2f} s limit "
                           f"derived from the incumbent (nothing compiled in it)")
        figures.warmup_s = second
        return beyond

    def measure(self, figures: Figures, policy, screen_s: float | None = None, race_s: float | None = None,
                pass_first: bool = False) -> None:
        """Rounds of one call per shape until the CV of a round's time is under target (after
        min_runs) or a cap is reached, or — screened — after the first when it took longer than
        ``screen_s``, or after a later one when the rounds' median is above ``race_s`` (both from the
        incumbent's round: a loser's figures need no more precision); the memory high-water mark covers
        exactly these calls. ``pass_first``: the envelope pass is the first round's long shapes, where
        nothing compiled in it or the warm typical call (:meth:`pass_is_a_round`; the trial ran them alone),
        with that warm call — or, where it was a quality call (its tokens forced, a logits processor at
        every step), a typical call of its own."""
        compiles = measure.compile_count()
        first = pass_first and self.pass_is_a_round()
        typical = self.plain_call() if first else None
        first = first and not self.plain_compiled
        if first:  # (the pass's own calls are in the high-water mark already: no reset)
            rounds: list[list] = [[typical, *self.first_pass]]
        else:
            rounds = []
            self.memory.release_freed()
            self.memory.reset()
        start = time.perf_counter()
        while not (rounds and self._enough(rounds, figures, policy, screen_s, race_s, start)) \
                and len(rounds) < policy.max_runs:
            rounds.append([self.one_call(shape) for shape in range(len(self.shapes))])
        figures.measure_s = time.perf_counter() - start
        figures.steady_compiles = measure.compile_count() - compiles
        figures.pass_first = first or None
        self._figures(figures, rounds, policy)

    @staticmethod
    def _enough(rounds: list[list], figures: Figures, policy, screen_s: float | None, race_s: float | None,
                start: float) -> bool:
        """Whether :meth:`measure` has its rounds (and whether the candidate was screened, in ``figures``)."""
        totals = [sum(call[2] for call in r) for r in rounds]
        if (screen_s and len(rounds) == 1 and totals[0] > screen_s) \
                or (race_s and len(rounds) >= 2 and statistics.median(totals) > race_s):
            figures.screened = True
            return True
        return len(rounds) >= policy.min_runs and (measure.cv(totals) <= policy.target_cv
                                                   or time.perf_counter() - start > policy.max_measure_s)

    def pass_is_a_round(self) -> bool:
        """Whether the envelope pass and the warm typical call can stand as a round: nothing compiled in
        them, and every token of them was decoded (a sampled pass stands only for a screened loser)."""
        return not (self.pass_compiled or self.extrapolated_s)

    @property
    def pass_compiled(self) -> bool:
        """Whether anything compiled in the envelope pass or the warm typical call: their times then say
        nothing of the recipe's steady state, and they stand as no round."""
        return self.first_pass_compiled or self.warm_compiled

    def screen_on_first_pass(self, figures: Figures, policy, screen_s: float) -> bool:
        """Screen before any measured round: the envelope pass (every other shape once, after the engine's
        warm-up) and the warm typical call make a round, and when nothing compiled in them and it took
        longer than ``screen_s`` the candidate is a loser already — its figures are that round's (``runs``
        1, ``screened``, ``measure_s`` 0), instead of one more round confirming it (a slow eager candidate's
        round took ~14 s of a 35 s trial in the README job). Only for a trial that ran that pass alone
        (one lane). Returns whether it screened."""
        if self.pass_compiled:  # (:meth:`pass_as_round` would refuse it: no plain call is spent on it)
            return False
        # the warm call is the slower where it differs (its quality scoring): under the line with it, the
        # candidate is under it with a plain one too, and no call is spent on finding out
        rest = sum(call[2] for call in self.first_pass)
        if self.warm_call[2] + rest <= screen_s or (screen_s and self.round_typical()[2] + rest <= screen_s):
            return False
        return self.pass_as_round(figures, policy, screened=True)

    def plain_call(self):
        """The warm typical call, or — where it scored quality (its tokens forced, a logits processor at
        every step) — a typical call of its own, timed once."""
        if self.quality is None:
            return self.warm_call
        if self.plain_typical is None:
            compiles = measure.compile_count()
            self.plain_typical = self.one_call(0)
            self.plain_compiled = measure.compile_count() != compiles  # (a path without the scoring's processor)
        return self.plain_typical

    def round_typical(self):
        """The typical call a round made of the envelope pass times without a round of its own: the warm
        call on CPU, where its quality scoring costs little; on CUDA :meth:`plain_call`, since the scoring
        copies each step's logits to the host (a sync per token the served path never makes) — a fast
        candidate would be screened as a loser, its TPOT read slow."""
        return self.plain_call() if self.device == "cuda" else self.warm_call

    def pass_as_round(self, figures: Figures, policy, screened: bool = False) -> bool:
        """The envelope pass and the warm typical call as the trial's one round (``runs`` 1, ``measure_s``
        0; ``screened`` as the caller judged it), when nothing compiled in them. Returns whether they were."""
        if self.pass_compiled or (self.extrapolated_s and not screened):
            return False  # (a sampled pass stands only for a screened loser: one that is not measures rounds)
        typical = self.round_typical()
        if self.plain_compiled and typical is self.plain_typical:
            return False
        figures.screened, figures.measure_s, figures.steady_compiles = screened or None, 0.0, 0
        figures.decode_sampled = SAMPLED_DECODE_TOKENS if self.extrapolated_s else None
        self._figures(figures, [[typical, *self.first_pass]], policy,
                      forced=self.quality is not None and typical is self.warm_call)
        return True

    def _figures(self, figures: Figures, rounds: list[list], policy, forced: bool = False) -> None:
        """The figures of the timed ``rounds`` (``forced``: the typical call of the first is a quality call,
        whose tokens were forced, so the greedy reference needs a call of its own)."""
        figures.peak_memory_bytes = self.memory.peak()
        self._speed(figures, rounds, policy)
        if figures.runs == 1:  # one round: its spread is unknown, not small
            figures.cv = figures.noisy = None
        # a screened loser's greedy match, unasked for, is left unmeasured: its typical calls were forced
        skip = figures.screened and (forced or self.sampling) and not self.greedy_match
        figures.output_ids = [] if skip else self._greedy_reference(rounds, forced)
        figures.bytes_per_step = roofline.bytes_per_step(
            self.applied.model, self.workload.batch_size,
            sum(p + n / 2 for p, n, _ in self.shapes) / len(self.shapes))

    def _speed(self, figures: Figures, rounds: list[list], policy) -> None:
        """The traffic mix over all timed calls, and each shape's own figures."""
        calls = [call for r in rounds for call in r]
        batch = self.workload.batch_size
        e2e = measure.Stats.of([c[2] for c in calls])
        ttft = measure.Stats.of([c[1].ttft for c in calls])
        tpot = measure.Stats.of([t for c in calls for t in c[1].tpots])
        totals = [sum(call[2] for call in r) for r in rounds]
        figures.runs = len(rounds)
        figures.cv = measure.cv(totals)
        figures.noisy = figures.cv > policy.target_cv
        figures.ttft_ms_p50, figures.ttft_ms_p95 = ttft.p50 * 1e3, ttft.p95 * 1e3
        figures.tpot_ms_p50, figures.tpot_ms_p95 = tpot.p50 * 1e3, tpot.p95 * 1e3
        figures.e2e_ms_p50, figures.e2e_ms_p95 = e2e.p50 * 1e3, e2e.p95 * 1e3
        figures.tokens_per_s = batch * sum(n for _, n, _ in self.shapes) / statistics.median(totals)
        figures.shapes = []
        for index, (prompt, new, _) in enumerate(self.shapes):
            mine = [r[index] for r in rounds]
            e2e_s = statistics.median(c[2] for c in mine)
            figures.shapes.append({
                "prompt_tokens": prompt, "new_tokens": new, Key.tokens_per_s: batch * new / e2e_s,
                Key.e2e_ms_p50: e2e_s * 1e3, Key.ttft_ms_p50: statistics.median(c[1].ttft for c in mine) * 1e3,
                Key.tpot_ms_p50: statistics.median(t for c in mine for t in c[1].tpots) * 1e3})
        # what the first pass over every shape and the warm typical call cost beyond their steady time
        steady = sum(s[Key.e2e_ms_p50] for s in figures.shapes) / 1e3 + figures.shapes[0][Key.e2e_ms_p50] / 1e3
        paid = figures.first_call_s + figures.envelope_pass_s + self.extrapolated_s + figures.warmup_s
        figures.compile_s = max(0.0, paid - steady)
        steps = sum(c[1].steps for c in calls)
        figures.tokens_per_step = sum(len(c[1].tpots) for c in calls) / steps if steps else None

    def _greedy_reference(self, rounds: list[list], forced: bool = False) -> list[int]:
        """The typical call's free-running greedy tokens (greedy_match is scored on them): the last
        round's, or — when the envelope samples, or that call was forced — one more call, greedy and untimed."""
        prompt, new, inputs = self.shapes[0]
        out = rounds[-1][0][0]
        if self.sampling or forced:
            out = self.applied.generate_ids(inputs, max_new_tokens=new, min_new_tokens=new)
        return out[:, prompt:].flatten().tolist()


class _Extended:
    """A sampled call's timings read as the whole call's: ``rest`` more tokens, each the next of its
    timed decode steps' per-token times in turn (:meth:`_Run.sampled_call`)."""

    def __init__(self, streamer, rest: int):
        timed = streamer.tpots
        extra = [timed[i % len(timed)] for i in range(rest)]
        self.ttft, self.tpots, self.rest_s = streamer.ttft, timed + extra, sum(extra)
        per_step = len(timed) / streamer.steps if streamer.steps else 1.0
        self.steps = streamer.steps + round(rest / per_step)


def _abandon_tpot(compiles_at_start: int):
    """What a call does with decode steps far slower than the incumbent's: abandon the trial — judged
    on steps that ran compiled code: while something compiles (the count moved since the last slow
    window) the window says nothing, and the next slow one decides."""
    seen = [compiles_at_start]

    def on_slow(tpot: float, limit: float, step: int) -> None:
        now = measure.compile_count()
        if now != seen[0]:
            seen[0] = now
            return
        raise Hopeless(f"decode steps {step - 4}-{step} took {tpot * 1e3:.1f} ms (median), beyond the "
                       f"{limit * 1e3:.1f} ms limit derived from the incumbent (nothing compiled meanwhile)")

    return on_slow


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
        self.reference: str | None = None
        self.write_reference = False

    def inputs(self, call: int):
        context, forced = self.calls[call]
        self.forcers[call] = measure.forcing_processor(forced)
        return context, {"logits_processor": _processors(self.forcers[call])}

    def check_finite(self, call: int) -> None:
        """Fails the trial at once when quality call ``call`` met non-finite probabilities (the first call
        is one: a float16 recipe's NaN otherwise ran its whole trial, ~30 s, to fail at the end)."""
        import torch

        finite(torch.stack(self.forcers[call].nll, 1).flatten().tolist())

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
        finite(nll)
        figures.top1 = top1
        figures.perplexity = float(torch.tensor(nll).mean().exp())
        self._divergence(figures)
        figures.quality_s = time.perf_counter() - start

    def _divergence(self, figures: Figures) -> None:
        """The baseline keeps its next-token distributions for the candidates; a candidate's KL
        divergence from them (None when the baseline's are not on this machine)."""
        import os
        from pathlib import Path

        import torch

        if self.reference is None:
            return
        mine = torch.cat([torch.cat(self.forcers[call].logp) for call in range(QUALITY_CALLS)])
        path = Path(self.reference)
        if self.write_reference:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{os.getpid()}-{path.name}")
            torch.save(mine, tmp)
            os.replace(tmp, path)  # whole or not at all: a candidate may read it now
        if path.exists():
            theirs = torch.load(path)
            if theirs.shape == mine.shape:
                figures.kld = measure.kl_divergence(theirs, mine)


def finite(nll: list[float]) -> None:
    """Raises when a forced call's negative log-likelihoods are not all finite: float16 weights overflowed
    on a CPU gave NaN at every step, and a NaN KLD the budget cannot judge."""
    broken = sum(1 for x in nll if not math.isfinite(x))
    if broken:
        raise RuntimeError(f"the recipe's next-token probabilities are not finite (NaN or inf) at {broken} of "
                           f"{len(nll)} decode steps: its arithmetic overflows")


#: how much slower than the warm limit a decode step of the first (compiling) call may be
FIRST_CALL_SLACK = 10.0

#: new tokens of the envelope's widest batch, untimed, where the recipe compiled nothing for its first call
WIDE_CHECK_TOKENS = 2

#: new tokens the envelope pass decodes of each shape for a candidate whose typical first call compiled
#: nothing and was already past the screen (a loser): the rest of each call is extrapolated from its
#: decoded steps (:class:`_Extended`). Its long prompts are timed whole; the decode of their 64 new tokens
#: was a third of such a trial's envelope pass (README job, eager candidates at 30-100 ms a token)
SAMPLED_DECODE_TOKENS = 16

#: generate calls quality is scored on (each with the workload's batch of reference windows); the
#: first two are the warm-up calls
QUALITY_CALLS = 3


def _processors(*processors):
    from transformers import LogitsProcessorList

    return LogitsProcessorList(processors)
