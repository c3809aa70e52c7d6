"""Isolated measurement: figures, and every failure class while the parent lives."""
from __future__ import annotations

import pytest
from conftest import FAST

import plugins_for_tests
from autotune.evaluate import evaluate
from autotune.measure import Stats, cv, token_agreement
from autotune.models import resolve_model
from autotune.plugins import get_optimizations, pm
from autotune.recipe import resolve
from autotune.target import current_target
from autotune.workload import Workload

WORKLOAD = Workload(prompt_tokens=8, new_tokens=6)


@pytest.fixture
def chaos():
    pm.register(plugins_for_tests, name="plugins_for_tests")
    try:
        yield get_optimizations()
    finally:
        pm.unregister(name="plugins_for_tests")


def run(tiny_model, optimizations, partial, timeout=120.0, baseline=None):
    recipe = resolve(partial, optimizations)
    return evaluate(resolve_model(tiny_model), recipe, WORKLOAD, current_target("cpu"), optimizations,
                    baseline=baseline, timeout=timeout, measure_opts=FAST)


def test_ok_measurement_has_every_figure(tiny_model):
    ev = run(tiny_model, get_optimizations(), {})
    assert ev.status == "ok", ev.error
    for key in ("tpot_ms_p50", "tpot_ms_p95", "ttft_ms_p50", "ttft_ms_p95", "e2e_ms_p50", "e2e_ms_p95",
                "tokens_per_s", "cv", "load_s", "compile_s", "peak_memory_bytes", "quality", "perplexity"):
        assert ev.get(key) is not None, key
    assert ev.get("quality") == 1.0  # the baseline agrees with itself
    assert len(ev.get("output_ids")) == WORKLOAD.new_tokens  # min_new_tokens == max_new_tokens
    assert ev.get("tpot_ms_p50") <= ev.get("tpot_ms_p95")
    assert ev.get("peak_memory_bytes") > 50 * 2**20  # a real process RSS, not a placeholder


@pytest.mark.parametrize("behaviour,status,text", [
    ("abort", "crash", "SIGABRT"),
    ("raise", "error", "chaos plugin raised on purpose"),
    ("oom", "oom", "MemoryError"),
])
def test_failures_are_classified(chaos, tiny_model, behaviour, status, text):
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": behaviour}})
    assert ev.status == status
    assert text in ev.error


def test_hang_is_killed_at_the_wall_clock_limit(chaos, tiny_model):
    ev = run(tiny_model, chaos, {"chaos": {"behaviour": "hang"}}, timeout=25)
    assert ev.status == "timeout"
    assert "25 s" in ev.error


def test_rule_pruned_before_launch(tiny_model):
    ev = run(tiny_model, get_optimizations(), {"compile": {"target": "decode"}})
    assert ev.status == "invalid"
    assert "cache.implementation=static" in ev.error


def test_quality_against_a_baseline(tiny_model):
    opts = get_optimizations()
    base = run(tiny_model, opts, {})
    cand = run(tiny_model, opts, {"quantization": {"method": "bnb-4bit", "quant_type": "fp4"}}, baseline=base)
    assert cand.status == "ok", cand.error
    assert 0 <= cand.get("quality") < 1.0  # 4-bit weights of a random model change its predictions
    assert cand.get("perplexity_ratio") is not None


def test_stats_and_agreement():
    s = Stats.of([1.0, 2.0, 3.0, 4.0])
    assert s.p50 == 2.5 and s.p95 == pytest.approx(3.85)
    assert cv([2.0, 2.0]) == 0.0
    assert token_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert token_agreement([], [1]) is None
