"""Isolated measurement: figures that can be wrong are checked against what would make them wrong —
quality through the served decode path, the child's own memory, every failure class while the
parent lives, early abandonment."""
from __future__ import annotations

import os

import pytest
from conftest import ABANDONING, FAST, build_tiny_model

from autotune.evaluate import evaluate
from autotune.states import Status
from autotune.measure import Stats, cv, first_divergence, reference_windows, token_agreement
from autotune.recipe import resolve
from autotune.registry import get_optimizations
from autotune.sources import resolve_model
from autotune.spec import MeasurePolicy
from autotune.target import current_target
from autotune.trial import QUALITY_CALLS
from autotune.workload import Workload

WORKLOAD = Workload(prompt_tokens=8, new_tokens=6)
POLICY = MeasurePolicy(**FAST)


def run(model, optimizations, partial, timeout=120.0, baseline=None, workload=WORKLOAD, policy=POLICY, **kw):
    recipe = resolve(partial, optimizations)
    return evaluate(resolve_model(model), recipe, workload, current_target("cpu"), optimizations,
                    baseline=baseline, timeout=timeout, policy=policy, **kw)


def test_a_recipe_whose_probabilities_are_not_finite_fails_with_one_line(chaos, tiny_model):
    """NaN logits (float16 weights overflowing on a CPU) left a NaN KLD, which Optuna refused as a
    constraint and the search died with a traceback: the trial fails, saying why."""
    base = run(tiny_model, chaos, {})
    nan = run(tiny_model, chaos, {"corrupt": {"decode": "nan"}}, baseline=base)
    assert nan.status == Status.ERROR and "not finite" in nan.error and "\n" not in nan.error.strip(), nan.error
    assert nan.figures.phase == "first call"  # found in the first (forced) call, not after the whole trial


def test_ok_measurement_has_every_figure(tiny_model):
    ev = run(tiny_model, get_optimizations(), {})
    assert ev.status == Status.OK, ev.error
    f = ev.figures
    for key in ("tpot_ms_p50", "tpot_ms_p95", "ttft_ms_p50", "ttft_ms_p95", "e2e_ms_p50", "e2e_ms_p95",
                "tokens_per_s", "cv", "load_s", "first_call_s", "warmup_s", "measure_s", "quality_s", "wall_s",
                "compile_s", "peak_memory_bytes", "load_peak_bytes", "weights_bytes", "perplexity"):
        assert f.get(key) is not None, key
    assert len(f.output_ids) == WORKLOAD.new_tokens  # min_new_tokens == max_new_tokens
    # quality was scored at every decode step of every reference window
    assert len(f.top1) == QUALITY_CALLS * WORKLOAD.batch_size * WORKLOAD.new_tokens
    assert f.wall_s > f.load_s + f.measure_s
    assert f.noisy == (f.cv > POLICY.target_cv)


def test_quality_sees_what_happens_only_in_decode_steps(chaos, tiny_model):
    """A plugin that corrupts only one-token decode steps (a broken KV cache, a miscompiled decode
    step) must fail the quality floor; the same recipe without the fault must pass it."""
    base = run(tiny_model, chaos, {})
    clean = run(tiny_model, chaos, {"cache": {"implementation": "static"}}, baseline=base)
    broken = run(tiny_model, chaos, {"cache": {"implementation": "static"}, "corrupt": {"decode": "noisy"}},
                 baseline=base)
    assert clean.status == broken.status == Status.OK, (clean.error, broken.error)
    assert clean.figures.quality >= 0.95
    assert broken.figures.quality < 0.95, broken.figures.quality
    assert broken.figures.perplexity_ratio != 1.0  # (a random model's perplexity can move either way)
    assert broken.figures.greedy_match < 1.0 and broken.figures.first_divergence is not None


def test_memory_is_the_childs_own_not_its_parents(tiny_model):
    """``ru_maxrss`` survives exec: a spawned child would report this process's peak. Inflate it."""
    ballast = bytearray(1536 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page
    ev = run(tiny_model, get_optimizations(), {})
    del ballast
    assert ev.status == Status.OK, ev.error
    assert ev.figures.peak_memory_bytes < 1024 * 2**20, ev.figures.peak_memory_bytes


def test_lower_precision_weights_lower_the_steady_state_peak(tmp_path):
    """A model big enough to matter (~36M parameters): bf16 weights must show clearly below fp32."""
    model = str(build_tiny_model(tmp_path / "medium", hidden=1024, layers=4))
    opts = get_optimizations()
    fp32 = run(model, opts, {"dtype": {"dtype": "auto"}}, timeout=300)  # the checkpoint's: float32
    bf16 = run(model, opts, {"dtype": {"dtype": "bfloat16"}}, timeout=300)
    assert fp32.ok and bf16.ok, (fp32.error, bf16.error)
    saved = fp32.figures.weights_bytes - bf16.figures.weights_bytes
    assert saved > 60 * 2**20  # half of ~144 MB of fp32 weights
    assert bf16.figures.peak_memory_bytes < fp32.figures.peak_memory_bytes - saved / 2, \
        (fp32.figures.peak_memory_bytes, bf16.figures.peak_memory_bytes)


@pytest.mark.parametrize("behaviour,status,text", [
    ("abort", "crash", "SIGABRT"),
    ("raise", "error", "chaos plugin raised on purpose"),
    ("oom", "oom", "MemoryError"),
])
def test_failures_are_classified(chaos, tiny_model, behaviour, status, text):
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": behaviour}})
    assert ev.status == status
    assert text in ev.error
    assert ev.figures.phase == "load"  # chaos acts while the recipe is applied


def test_hang_is_killed_at_the_wall_clock_limit_naming_the_phase(chaos, tiny_model):
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "hang"}}, timeout=25)
    assert ev.status == Status.TIMEOUT
    assert "25 s" in ev.error and "load phase" in ev.error
    assert ev.figures.phase == "load" and ev.figures.wall_s >= 25


def test_a_trial_out_of_time_in_its_first_call_says_how_long_that_call_ran(chaos, tiny_model, monkeypatch):
    """Killed at its wall-clock limit while compiling, a trial records how long its first call had run:
    its compile takes at least that (a bound in the compile history, autotune.store.queries)."""
    monkeypatch.setenv("CHAOS_SLOW_S", "600")
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "slow-compile"}}, timeout=40)
    assert ev.status == Status.TIMEOUT and ev.figures.phase == "first call", ev.error
    past = ev.figures.first_call_past_s
    assert past is not None and 10 < past <= 40 and past < ev.figures.wall_s, past
    assert f"its first call {past:.0f} s long" in ev.error
    # killed in another phase: no first call to bound
    assert run(tiny_model, chaos, {"chaos": {"behaviour": "hang"}}, timeout=15).figures.first_call_past_s is None


def test_hopeless_candidate_is_abandoned_with_partial_figures(tiny_model):
    from autotune.figures import Figures

    ev = run(tiny_model, get_optimizations(), {}, incumbent=Figures(e2e_ms_p50=1e-6, tpot_ms_p50=1e3),
             policy=MeasurePolicy(**ABANDONING))
    assert ev.status == Status.PRUNED
    assert ev.figures.phase == "warm-up" and ev.figures.e2e_ms_p50 > 0 and ev.figures.runs is None
    assert "limit derived from the incumbent" in ev.error


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_candidate_past_the_abandon_limit_after_its_envelope_pass_keeps_figures(tiny_model, lanes):
    """Its warm call past the abandon limit, a candidate that ran its envelope pass alone gets that pass's
    figures (ok, screened, no measured round) instead of none; in a lane beside others (its pass's
    timings say nothing) it is abandoned as before."""
    from autotune.figures import Figures
    from autotune.isolate import Gate

    leader = Figures(e2e_ms_p50=1e-6, tpot_ms_p50=1e3,
                     shapes=[{"prompt_tokens": 8, "new_tokens": 6, "e2e_ms_p50": 1e-6}])
    policy = MeasurePolicy(**{**ABANDONING, "screen_factor": 1.25})
    ev = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=policy, gate=Gate(lanes))
    if lanes > 1:
        assert ev.status == Status.PRUNED and "limit derived from the incumbent" in ev.error, ev.error
        return
    assert ev.status == Status.OK, ev.error
    f = ev.figures
    assert f.screened and f.runs == 1 and f.measure_s == 0 and f.tokens_per_s > 0 and f.quality is not None
    assert len(f.shapes) == 1 and len(f.output_ids) == 6


def test_a_candidate_far_behind_the_leader_is_measured_one_round(tiny_model):
    """Screened: a first measured round slower than the screen factor times the incumbent's ends the
    measurement with that round's figures (ok, runs 1); without an incumbent, or with screening off,
    the same candidate gets min_runs rounds. The incumbent's round (1 us) is slower than no real call."""
    from autotune.figures import Figures

    leader = Figures(e2e_ms_p50=1e3, tpot_ms_p50=1e3, shapes=[{"prompt_tokens": 8, "new_tokens": 6, "e2e_ms_p50": 1e-3}])
    screening = MeasurePolicy(**{**FAST, "screen_factor": 1.25})
    screened = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=screening)
    assert screened.status == Status.OK, screened.error
    f = screened.figures
    assert f.runs == 1 and f.screened and f.cv is None and f.tokens_per_s > 0 and f.tpot_ms_p50 > 0
    # screened on the envelope pass and the warm call (nothing compiled in them): no measured round at all,
    # every figure still there — memory, quality, and a free-running greedy reference of its own
    assert f.measure_s == 0 and f.peak_memory_bytes > 0 and f.quality is not None
    assert len(f.output_ids) == 6
    # unless no budget names greedy_match: its own call is then saved, and the figure left unmeasured
    base = run(tiny_model, get_optimizations(), {})
    unasked = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=screening, baseline=base,
                  greedy_match=False)
    assert unasked.status == Status.OK and unasked.figures.screened, unasked.error
    assert unasked.figures.output_ids == [] and unasked.figures.greedy_match is None
    assert unasked.figures.quality is not None and unasked.figures.tokens_per_s > 0
    asked = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=screening, baseline=base)
    assert asked.figures.screened and asked.figures.greedy_match is not None
    alone = run(tiny_model, get_optimizations(), {}, policy=screening)
    off = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=MeasurePolicy(**FAST))
    for ev in (alone, off):
        assert ev.status == Status.OK and ev.figures.runs >= FAST["min_runs"] and not ev.figures.screened


def test_pass_round_makes_the_envelope_pass_the_one_round(tiny_model):
    """``pass_round`` (a time-boxed search's HF default): the envelope pass and the warm typical call are
    the trial's round — no measured round, not screened, its spread unknown — with every figure; without
    it the same trial measures min_runs rounds."""
    one = run(tiny_model, get_optimizations(), {}, policy=MeasurePolicy(**{**FAST, "pass_round": True}))
    assert one.status == Status.OK, one.error
    f = one.figures
    assert f.runs == 1 and f.measure_s == 0 and not f.screened and f.cv is None and f.noisy is None
    assert f.tokens_per_s > 0 and f.peak_memory_bytes > 0 and f.quality is not None and len(f.output_ids) == 6
    assert len(f.shapes) == len(WORKLOAD.shapes())
    assert MeasurePolicy(**FAST).key == MeasurePolicy(**{**FAST, "pass_round": False}).key != \
        MeasurePolicy(**{**FAST, "pass_round": True}).key


@pytest.mark.parametrize("case", ["pass first", "off", "only round"])
def test_pass_first_makes_the_envelope_pass_the_first_measured_round(chaos, tiny_model, tmp_path, monkeypatch,
                                                                      case):
    """``pass_first`` (a time-boxed search's trials, the pair at its end): the envelope pass and the warm
    typical call are the first of the measured rounds, so one round of every shape fewer is called for the
    same ``runs``; without it every round is called anew. The warm typical call was a quality call (its tokens
    forced): the first round's typical call is one of its own, and the greedy reference the last round's."""
    log = tmp_path / "calls"
    monkeypatch.setenv("CHAOS_LOG", str(log))
    envelope = Workload(prompt_tokens=8, new_tokens=6, max_context=64)
    shapes = len(envelope.shapes())
    runs = 1 if case == "only round" else 2  # max_runs: as many rounds whatever their timings
    policy = MeasurePolicy(**{**FAST, "min_runs": runs, "max_runs": runs, "pass_first": case != "off"})
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "log-calls"}}, workload=envelope, policy=policy)
    assert ev.status == Status.OK, ev.error
    f = ev.figures
    calls = len(log.read_text().splitlines())
    # the typical first call, the pass's other shapes, the warm typical call; the rounds (the first of them,
    # with the pass, only its typical call); the third quality call
    measured = shapes * runs if case == "off" else 1 + shapes * (runs - 1)
    assert shapes == 3 and calls == shapes + 1 + measured + 1, (calls, measured)
    assert f.runs == runs and len(f.shapes) == shapes and f.tokens_per_s > 0 and f.peak_memory_bytes > 0
    assert f.pass_first is (True if case != "off" else None)
    assert len(f.output_ids) == envelope.new_tokens and f.quality is not None


def test_a_pass_that_compiled_is_no_measured_round(chaos, tiny_model, monkeypatch):
    """Where the envelope pass compiled something, ``pass_first`` leaves it out: every round is measured."""
    monkeypatch.setenv("CHAOS_CALL_S", "0")
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "compiling-calls"}},
             workload=Workload(prompt_tokens=8, new_tokens=6, max_context=64),
             policy=MeasurePolicy(**{**FAST, "min_runs": 2, "max_runs": 2, "pass_first": True}))
    assert ev.status == Status.OK, ev.error
    assert ev.figures.runs == 2 and ev.figures.pass_first is None


@pytest.mark.parametrize("compiles", [False, True])
def test_the_wide_batch_is_a_two_token_check_where_the_first_call_compiled_nothing(chaos, tiny_model, tmp_path,
                                                                                  monkeypatch, compiles):
    """The envelope's widest batch runs once, untimed: two new tokens (its prompt pass and a decode step)
    where nothing compiled for the typical call; every token where something did (its decode steps
    compile for the batch)."""
    log = tmp_path / "calls"
    monkeypatch.setenv("CHAOS_LOG", str(log))
    if compiles:
        monkeypatch.setenv("CHAOS_COMPILE_FIRST", "1")
    wide = Workload(prompt_tokens=8, new_tokens=6, max_context=64, max_batch=2)
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "log-calls"}}, workload=wide)
    assert ev.status == Status.OK, ev.error
    calls = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    assert [new for rows, new in calls if rows == 2] == [6 if compiles else 2]
    assert all(new == 6 for rows, new in calls if rows == 1)


@pytest.mark.parametrize("case", ["loser", "not screened", "compiles", "no incumbent"])
def test_a_loser_on_its_typical_first_call_decodes_a_sample_of_its_long_shapes(chaos, tiny_model, tmp_path,
                                                                               monkeypatch, case):
    """A typical first call that compiled nothing and already ran past the screen marks a loser: its
    envelope pass decodes SAMPLED_DECODE_TOKENS of each long shape's new tokens, and the one round it
    is screened on extrapolates the rest at each shape's median step (figures for every shape, saying
    so). One whose pass is not screened after all measures rounds of every token, its figures theirs.
    A first call that compiled, or no incumbent to screen against: every token, as before."""
    from autotune.figures import Figures
    from autotune.trial import SAMPLED_DECODE_TOKENS

    log = tmp_path / "calls"
    monkeypatch.setenv("CHAOS_LOG", str(log))
    if case == "compiles":
        monkeypatch.setenv("CHAOS_COMPILE_FIRST", "1")
    new = SAMPLED_DECODE_TOKENS + 16
    envelope = Workload(prompt_tokens=8, new_tokens=new, max_context=4 * new)
    # the leader's typical call is faster than any; its round, in "not screened", slower than any
    long_ms = 1e9 if case == "not screened" else 1e-3
    leader = Figures(e2e_ms_p50=1e-3, tpot_ms_p50=1e3,
                     shapes=[{"prompt_tokens": 8, "new_tokens": new, "e2e_ms_p50": 1e-3}]
                     + [{"prompt_tokens": 8, "new_tokens": new, "e2e_ms_p50": long_ms}] * 2)
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "log-calls"}}, workload=envelope,
             incumbent=None if case == "no incumbent" else leader,
             policy=MeasurePolicy(**{**FAST, "screen_factor": 1.25, "pass_round": case == "not screened"}))
    assert ev.status == Status.OK, ev.error
    f = ev.figures
    decoded = [int(line.split()[1]) for line in log.read_text().splitlines()]
    long_shapes = len(envelope.shapes()) - 1
    assert long_shapes == 2 and len(f.shapes) == 3
    if case == "loser":
        # typical first call (whole), the long shapes (sampled), the warm call; then quality, greedy
        assert decoded[:4] == [new, SAMPLED_DECODE_TOKENS, SAMPLED_DECODE_TOKENS, new], decoded
        assert f.screened and f.runs == 1 and f.decode_sampled == SAMPLED_DECODE_TOKENS
        for shape in f.shapes[1:]:  # extrapolated to all its new tokens, its 15 timed steps repeated: at
            # least 8 of them are at or above their median, and each counts twice (15 timed steps fall short)
            assert shape["new_tokens"] == new
            floor = 2 * (SAMPLED_DECODE_TOKENS // 2) * shape["tpot_ms_p50"]
            assert shape["e2e_ms_p50"] - shape["ttft_ms_p50"] >= floor * (1 - 1e-9), shape
        assert f.tokens_per_step == 1.0  # every new token a step of its own, the extrapolated ones too
    elif case == "not screened":  # sampled in the pass, then rounds of every token: the figures are theirs
        # (even where the policy makes a pass the one round, pass_round: a sampled pass is no round)
        assert decoded[1:3] == [SAMPLED_DECODE_TOKENS] * 2 and decoded[4:7] == [new] * 3, decoded
        assert not f.screened and f.runs >= 2 and f.decode_sampled is None and f.measure_s > 0
    else:
        assert SAMPLED_DECODE_TOKENS not in decoded and f.decode_sampled is None, decoded


def test_a_candidate_behind_the_leader_after_two_rounds_is_raced_out(tiny_model):
    """Raced: from the second round on, a median round above the race factor times the incumbent's
    ends the measurement (ok, runs 2, its spread known), where min_runs would ask for three."""
    from autotune.figures import Figures

    leader = Figures(e2e_ms_p50=1e3, tpot_ms_p50=1e3, shapes=[{"prompt_tokens": 8, "new_tokens": 6, "e2e_ms_p50": 1e-3}])
    rules = {**FAST, "min_runs": 3, "max_runs": 5, "max_measure_s": 60}
    raced = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=MeasurePolicy(**{**rules, "race_factor": 1.1}))
    assert raced.status == Status.OK, raced.error
    f = raced.figures
    assert f.runs == 2 and f.screened and f.cv is not None and f.tokens_per_s > 0
    full = run(tiny_model, get_optimizations(), {}, incumbent=leader, policy=MeasurePolicy(**rules))
    assert full.status == Status.OK and full.figures.runs >= 3 and not full.figures.screened


def test_a_warm_call_that_compiled_is_not_judged_hopeless(chaos, tiny_model):
    """Prune on evidence: the same slow warm call is hopeless when it decoded, not when it compiled."""
    from autotune.figures import Figures

    incumbent = Figures(e2e_ms_p50=1e-3, tpot_ms_p50=1e3)
    slow = run(tiny_model, chaos, {"chaos": {"behaviour": "slow-calls"}}, incumbent=incumbent,
               policy=MeasurePolicy(**ABANDONING))
    compiling = run(tiny_model, chaos, {"chaos": {"behaviour": "compiling-calls"}}, incumbent=incumbent,
                    policy=MeasurePolicy(**ABANDONING))
    assert slow.status == Status.PRUNED and "nothing compiled in it" in slow.error
    assert compiling.status == Status.OK, compiling.error


def test_slow_decode_steps_abandon_mid_call(tiny_model):
    """Decode steps far slower than the incumbent's stop the first call itself (a 4-bit CPU matmul
    that takes seconds per token never gets to run 64 of them, twice)."""
    from autotune.figures import Figures

    long = Workload(prompt_tokens=8, new_tokens=40)
    ev = run(tiny_model, get_optimizations(), {}, workload=long, incumbent=Figures(e2e_ms_p50=1e3, tpot_ms_p50=1e-6),
             policy=MeasurePolicy(**ABANDONING))
    assert ev.status == Status.PRUNED and "decode steps" in ev.error and "nothing compiled meanwhile" in ev.error
    assert ev.figures.first_call_s is None  # stopped inside the first call


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_lane_beside_others_is_judged_hopeless_only_alone(tiny_model, lanes):
    """A search's lane runs its first calls beside another lane's trial (whose compile may take the
    cores: 35 ms steps measured 4.7 s there), so the same slow steps stop it only in its warm call,
    which runs alone in its timed window: the first call runs to its end. A search of one lane (its
    gate too) stops the first call itself."""
    from autotune.figures import Figures
    from autotune.isolate import Gate

    long = Workload(prompt_tokens=8, new_tokens=40)
    ev = run(tiny_model, get_optimizations(), {}, workload=long, incumbent=Figures(e2e_ms_p50=1e3, tpot_ms_p50=1e-6),
             policy=MeasurePolicy(**ABANDONING), gate=Gate(lanes))
    assert ev.status == Status.PRUNED and "decode steps" in ev.error, ev.error
    if lanes > 1:
        assert ev.figures.first_call_s is not None and ev.figures.phase == "warm-up"
    else:
        assert ev.figures.first_call_s is None  # stopped inside the first call


def test_a_compile_past_the_cap_is_pruned_not_waited_for(chaos, tiny_model, monkeypatch):
    """A search stops a first call (where compilation happens) that runs past max_first_call_s and
    prunes the trial, naming why, long before the trial's own limit; the baseline is never cut."""
    import time

    from autotune.spec import MeasurePolicy

    monkeypatch.setenv("CHAOS_SLOW_S", "60")
    base = run(tiny_model, chaos, {})
    policy = MeasurePolicy(**{**FAST, "max_first_call_s": 3})
    start = time.monotonic()
    ev = evaluate(resolve_model(tiny_model), resolve({"chaos": {"behaviour": "slow-compile"}}, chaos), WORKLOAD,
                  current_target("cpu"), chaos, baseline=base, timeout=120, policy=policy, first_call_cap_s=3)
    assert ev.status == Status.PRUNED and "first call (compilation) ran past 3 s" in ev.error, ev.error
    assert ev.figures.phase == "first call" and time.monotonic() - start < 30
    # bench (no cap) waits for it: the same recipe measured to the end with a short sleep
    monkeypatch.setenv("CHAOS_SLOW_S", "4")
    assert run(tiny_model, chaos, {"chaos": {"behaviour": "slow-compile"}}, baseline=base).ok


def test_rule_pruned_before_launch(tiny_model):
    ev = run(tiny_model, get_optimizations(), {"compile": {"target": "decode"}})
    assert ev.status == Status.INVALID
    assert "cache.implementation=static" in ev.error


def test_stats_agreement_and_windows():
    s = Stats.of([1.0, 2.0, 3.0, 4.0])
    assert s.p50 == 2.5 and s.p95 == pytest.approx(3.85)
    assert cv([2.0, 2.0]) == 0.0
    assert token_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert token_agreement([], [1]) is None
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2 and first_divergence([1, 2], [1, 2]) is None
    windows = reference_windows(list(range(10)), 3, 2, 3)  # wraps around a short text
    assert windows == [([0, 1, 2], [3, 4]), ([5, 6, 7], [8, 9]), ([0, 1, 2], [3, 4])]


def test_trials_compile_into_autotunes_persistent_cache(tiny_model, monkeypatch, tmp_path):
    """Torch writes its /tmp default into TORCHINDUCTOR_CACHE_DIR the first time anything asks (the
    search's parent does, building the space): trials must still compile into autotune's cache dir,
    where the next trial and the next search find the graph (it went to /tmp before this was fixed)."""
    from importlib.metadata import version

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from autotune.evaluate import evaluate
    from autotune.paths import compile_cache_dir
    from autotune.recipe import resolve
    from autotune.registry import get_optimizations
    from autotune.sources import resolve_model
    from autotune.spec import MeasurePolicy
    from autotune.target import current_target
    from autotune.workload import Workload

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))  # empty: the graph is compiled, not found
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.abspath(default_cache_dir()))
    ours = compile_cache_dir(version("torch"))
    before: set = set()
    opts = get_optimizations()
    ev = evaluate(resolve_model(tiny_model), resolve({"compile": {"target": "forward"}}, opts),
                  Workload(prompt_tokens=8, new_tokens=4), current_target("cpu"), opts, timeout=300,
                  policy=MeasurePolicy(min_runs=2, max_runs=2, quality=False))
    assert ev.ok, ev.error
    assert any(p.is_file() for p in set(ours.rglob("*")) - before), f"nothing compiled into {ours}"


def test_kl_divergence_from_the_baseline_through_the_served_path(tiny_model):
    """The HF default keeps its next-token distributions; a candidate's mean KL divergence from them:
    0 for the same program, above 0 for bf16 weights, a quality figure the budget can hold
    (``kld<=...``)."""
    base = run(tiny_model, get_optimizations(), {})
    same = run(tiny_model, get_optimizations(), {"cache": {"implementation": "static"}}, baseline=base)
    bf16 = run(tiny_model, get_optimizations(), {"dtype": {"dtype": "bfloat16"}}, baseline=base)
    assert base.ok and same.ok and bf16.ok, (base.error, same.error, bf16.error)
    assert base.figures.kld == 0.0
    assert same.figures.kld == pytest.approx(0.0, abs=1e-6)  # a static cache runs the same math
    assert bf16.figures.kld > 20 * max(same.figures.kld, 1e-7)  # rounding the weights moves the distribution
    from autotune.budget import parse_budget

    assert parse_budget(f"kld<={bf16.figures.kld / 2:.9f}").missed(bf16.figures) != []


def test_a_baseline_is_measured_again_only_when_far_off_its_cv_target():
    """A second baseline is a whole trial: spent on a CV twice the target, not on any miss."""
    from autotune.figures import Figures
    from autotune.measurer import too_noisy_for_a_baseline

    policy = MeasurePolicy(target_cv=0.05)
    assert not too_noisy_for_a_baseline(Figures(cv=0.095, noisy=True), policy)  # the README job's, 75 s spent
    assert too_noisy_for_a_baseline(Figures(cv=0.12, noisy=True), policy)
    assert not too_noisy_for_a_baseline(Figures(cv=None), policy)
