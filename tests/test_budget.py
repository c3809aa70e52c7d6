"""The budget: its grammar, its verdicts, the objectives, and the figure registry they derive from."""
from __future__ import annotations

import pytest

from autotune.budget import (DEFAULT_QUALITY_FLOOR, LATENCY, OBJECTIVES, SPEED_CHECKS, parse_budget,
                             parse_objectives, regression_checks)
from autotune.errors import BudgetError
from autotune.figures import FIGURES, REGISTRY, Figures, Key


def test_budget_grammar():
    b = parse_budget("tpot_p50<=25ms,memory<=4GiB,ttft_p95<=0.5s")
    by = {lim.metric: lim for lim in b.limits}
    assert by["tpot_p50"].value == 25 and by["ttft_p95"].value == 500
    assert by["memory"].value == 4 * 2**30
    assert by["quality"].value == DEFAULT_QUALITY_FLOOR  # default floor applies
    assert parse_budget("quality>=0.97").quality_floor == 0.97
    assert parse_budget(b.text) == b  # the normalised text reads back the same


@pytest.mark.parametrize("bad", ["tpot<=25ms", "memory<=4", "tpot_p50<=25parsecs", "quality<=0.5", "quality>=2",
                                 "tpot_p50=25", "x"])
def test_budget_errors_show_the_grammar(bad):
    with pytest.raises(BudgetError, match="budget grammar"):
        parse_budget(bad)


def test_objectives():
    assert parse_objectives("tpot", False) == [("tpot_ms_p50", "minimize")]
    assert parse_objectives("throughput", False) == [("tokens_per_s", "maximize")]
    assert len(parse_objectives("tpot", True)) == 2
    with pytest.raises(BudgetError):
        parse_objectives("speed", False)


def test_a_kld_ceiling_is_a_quality_limit():
    b = parse_budget("kld<=0.01")
    lim = next(lim for lim in b.limits if lim.metric == "kld")
    assert lim.key == "kld" and lim.op == "<=" and lim.needs_real_weights
    assert b.missed(Figures(kld=0.02, quality=1.0)) == ["kld<=0.0100"]
    assert b.missed(Figures(kld=0.005, quality=1.0)) == []
    assert b.missed(Figures(kld=0.5, quality=1.0, quality_valid=False)) == []  # random weights: not judged
    assert b.violations(Figures(kld=float("nan"), quality=1.0))["kld<=0.0100"] == 1.0  # no figure: it misses
    for bad in ("kld>=0.01", "kld<=0.01ms"):
        with pytest.raises(BudgetError, match="kld is a ceiling"):
            parse_budget(bad)


def test_the_tables_derive_from_the_figure_registry():
    """One definition per figure: the budget's latencies, the objectives, the regression gate."""
    assert all(FIGURES[key].unit == "ms" for key in LATENCY.values())
    assert set(LATENCY) == {m for f in REGISTRY for m in f.budget if f.unit == "ms"}
    assert OBJECTIVES["tpot"] == (Key.tpot_ms_p50, "minimize") and OBJECTIVES["cost"] == OBJECTIVES["throughput"]
    assert {key for key, _ in SPEED_CHECKS} == {f.key for f in REGISTRY if f.gate}
    assert all(f.key in Figures.__dataclass_fields__ for f in REGISTRY)
    with pytest.raises(AttributeError):
        Key.tpot_ms_p05  # a misspelt figure is an error, not a silently missing value


def test_the_store_columns_are_registered_figures():
    from autotune.store import tables

    assert set(tables.Measurement.FIGURE_COLUMNS) <= set(FIGURES)


def test_regression_checks_hold_speed_and_quality_floors():
    stored = Figures(tokens_per_s=100.0, tpot_ms_p50=10.0, ttft_ms_p50=20.0, quality=0.99)
    same = regression_checks(stored, stored, 0.95, parse_budget("quality>=0.97"))
    assert all(c.ok for c in same) and {c.figure for c in same} == {"tokens_per_s", "tpot_ms_p50", "ttft_ms_p50",
                                                                    "quality"}
    slower = Figures(tokens_per_s=90.0, tpot_ms_p50=11.0, ttft_ms_p50=20.0, quality=0.96)
    failed = {c.figure for c in regression_checks(stored, slower, 0.95, parse_budget("quality>=0.97")) if not c.ok}
    assert failed == {"tokens_per_s", "tpot_ms_p50", "quality"}
