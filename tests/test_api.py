"""The Python API (autotune.search / bench / verify) end to end on a tiny model into a real SQLite
file, the regression gate `autotune verify --best`, and cost as an objective."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import FAST, write_study

import autotune
from autotune.cli import cli
from autotune.errors import AutotuneError, BudgetError, NoFeasibleRecipe, UsageError
from autotune.store import Store
from autotune.store import tables as m

pytestmark = pytest.mark.filterwarnings("ignore")

SPACE = {"compile.target": ["off"], "quantization.method": ["none", "torchao-int8-weight"], "dtype.dtype": ["auto"],
         "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"],
         "cache.ladder": ["x2", "one"]}
WORKLOAD = {"prompt_tokens": 8, "new_tokens": 6, "max_context": 64}


@pytest.fixture(scope="module")
def api_db(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('api') / 'tune.db'}"


@pytest.fixture(scope="module")
def tuned(tiny_model, api_db):
    """One real search through the Python API, shared by the tests that read its result."""
    return autotune.search(tiny_model, budget="memory<=4GiB", trials=3, db=api_db, workload=WORKLOAD,
                           space=SPACE, measure=FAST, study="api", progress=False)


def test_search_returns_the_best_recipe_and_every_trial(tuned, api_db):
    assert tuned.study == "api" and tuned.feasible and tuned.binding is None
    assert len(tuned.trials) >= 3 and {t["status"] for t in tuned.trials} <= {"ok", "invalid", "error", "pruned"}
    feasible = [t for t in tuned.trials if t["feasible"]]
    fastest = max(feasible, key=lambda t: t["tokens_per_s"])
    assert tuned.best["measurement_id"] == fastest["measurement_id"]  # the objective: tokens/s, maximised
    assert tuned.best["format"] == "autotune-recipe" and tuned.best["recipe"] == fastest["recipe"]
    with Store(api_db).session() as s:  # every row is the database's
        ids = {t["measurement_id"] for t in tuned.trials}
        assert s.query(m.Measurement).filter(m.Measurement.id.in_(ids)).count() == len(ids)
        assert s.query(m.Study).filter_by(name="api").one().best_measurement_id == tuned.best["measurement_id"]


def test_the_winner_loads_and_generates_the_measured_tokens(tuned):
    from autotune.workload import Workload

    for loaded in (tuned.load(), autotune.load(tuned.best)):
        w = Workload.from_dict(tuned.best["workload"])
        ids = w.input_ids(loaded.tokenizer, loaded.model.config.vocab_size)
        out = loaded.generate_ids(ids, max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens)
        assert out[0, ids.shape[1]:].tolist() == tuned.best["figures"]["output_ids"]


def test_trials_as_rows_and_as_a_dataframe(tuned):
    rows = tuned.rows()
    assert len(rows) == len(tuned.trials)
    assert all("cache.implementation" in r and "recipe" not in r and "output_ids" not in r for r in rows)
    pd = pytest.importorskip("pandas")
    df = tuned.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == len(tuned.trials)
    assert set(df["quantization.method"]) <= {"none", "torchao-int8-weight"}
    assert df.loc[df["measurement_id"] == tuned.best["measurement_id"], "feasible"].item()


def test_nothing_fits_returns_the_binding_limit(tiny_model, api_db, capfd):
    result = autotune.search(tiny_model, budget="tpot_p50<=0.001ms", trials=2, db=api_db, workload=WORKLOAD,
                             space=SPACE, measure=FAST, study="none-fits")
    assert result.best is None and not result.feasible and result.trials
    assert "tpot_p50: nearest candidate" in result.binding
    with pytest.raises(NoFeasibleRecipe, match="tpot_p50: nearest candidate"):
        result.load()
    assert "trial" in capfd.readouterr().err  # the progress bar (tqdm) went to stderr


@pytest.mark.parametrize("kwargs,error,match", [
    ({"budget": "speed>=fast"}, BudgetError, "budget grammar"),
    ({"workload": {"tokens": 3}}, UsageError, "unknown: tokens"),
    ({"objective": "cost"}, UsageError, "--price-per-hour"),
    ({"space": {"warp.drive": ["on"]}}, AutotuneError, "warp"),
])
def test_bad_arguments_raise_the_autotune_error_family(tiny_model, api_db, kwargs, error, match):
    with pytest.raises(error, match=match):
        autotune.search(tiny_model, db=api_db, progress=False, **kwargs)


def test_bench_measures_one_recipe_against_the_default(tiny_model):
    r = autotune.bench(tiny_model, {"cache": {"implementation": "static"}}, workload=WORKLOAD)
    assert r.ok and r.baseline["status"] == "ok" and r.recipe["cache"]["implementation"] == "static"
    assert r.ratio["tokens_per_s"] == pytest.approx(r["tokens_per_s"] / r.baseline["tokens_per_s"])


def test_bench_takes_a_search_result(tuned):
    r = autotune.bench(recipe=tuned.best)
    assert r.ok and r.recipe == tuned.best["recipe"] and r["workload"]["new_tokens"] == WORKLOAD["new_tokens"]


# -- cost as an objective ------------------------------------------------------------------------
def test_cost_objective_reports_dollars_per_million_tokens(tuned, tiny_model, api_db, tmp_path):
    """Same configurations as the shared search (reused, so no new measurement): the cheapest is
    the one with the most tokens/s, and each trial's cost follows from its tokens/s and the price."""
    result = autotune.search(tiny_model, objective="cost", price_per_hour=3.6, trials=3, db=api_db,
                             workload=WORKLOAD, space=SPACE, measure=FAST, study="cost", progress=False)
    ok = [t for t in result.trials if t["feasible"]]
    for t in ok:
        assert t["cost_per_mtok"] == pytest.approx(3.6 / 3600 / t["tokens_per_s"] * 1e6)
    cheapest = min(ok, key=lambda t: t["cost_per_mtok"])
    assert result.best["measurement_id"] == cheapest["measurement_id"]
    f = write_study(tmp_path, tiny_model, SPACE, trials=3, objective="cost", price_per_hour=3.6, study="cost-cli")
    out = CliRunner().invoke(cli, ["search", "--study-file", f, "--db", api_db])
    assert out.exit_code == 0, out.output
    assert "per 1M output tokens at $3.6/h" in out.stdout
    bad = CliRunner().invoke(cli, ["search", tiny_model, "--objective", "cost", "--db", api_db])
    assert bad.exit_code == 2 and "needs a price" in bad.output and "Traceback" not in bad.output
    # the report, from the database alone, prices the winner and every trial
    from autotune.report import gather, headline, trials_table
    from autotune.store import Store
    from autotune.target import current_target

    data = gather(Store(api_db), "cost", current_target("cpu"))
    assert data.price_per_hour == 3.6
    best_cost = 3.6 / 3600 / data.chosen.figures["tokens_per_s"] * 1e6
    assert f"${best_cost:,.2f} per 1M output tokens at $3.6/h" in headline(data)
    assert "$ / 1M tokens" in trials_table(data)


# -- the regression gate -------------------------------------------------------------------------
def _verify(*args):
    return CliRunner().invoke(cli, ["verify", *args])


def _stored_best(model, db) -> int:
    """The recipe `autotune recipes --best` answers with: what the gate re-measures."""
    r = CliRunner().invoke(cli, ["recipes", "--best", model, "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)[0]["id"]


def test_gate_passes_for_the_stored_best(tuned, tiny_model, api_db):
    r = _verify("--best", tiny_model, "--fail-under", "0.2", "--db", api_db)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"recipe {_stored_best(tiny_model, api_db)} ") and "PASS" in lines[0]
    figures = [line.split()[1].rstrip(":") for line in lines[1:]]
    assert figures == ["tokens_per_s", "tpot_ms_p50", "ttft_ms_p50", "quality"]
    assert all(line.startswith("PASS ") for line in lines[1:])


def test_gate_fails_when_slower_than_the_stored_figures(tuned, tiny_model, api_db):
    """The stored best claims 10x its real speed: every speed figure fails, quality still passes."""
    best_id = _stored_best(tiny_model, api_db)
    store = Store(api_db)
    with store.session() as s:
        row = s.get(m.Measurement, best_id)
        saved = dict(row.figures), row.tokens_per_s
        figures = dict(row.figures)
        figures["tokens_per_s"] *= 10
        figures["tpot_ms_p50"] /= 10
        figures["ttft_ms_p50"] /= 10
        row.figures, row.tokens_per_s = figures, figures["tokens_per_s"]
    try:
        r = _verify("--best", tiny_model, "--fail-under", "0.95", "--db", api_db, "--json")
        assert r.exit_code == 1, r.output
        verdict = json.loads(r.stdout)
        assert verdict["measurement_id"] == best_id and verdict["passed"] is False
        by = {c["figure"]: c for c in verdict["checks"]}
        assert not by["tokens_per_s"]["ok"] and not by["tpot_ms_p50"]["ok"] and not by["ttft_ms_p50"]["ok"]
        assert by["tokens_per_s"]["ratio"] < 0.5 and by["quality"]["ok"]
        text = _verify("--best", tiny_model, "--db", api_db)  # --fail-under 0.95 by default
        assert text.exit_code == 1 and "FAIL tokens_per_s: stored" in text.stdout and "PASS quality" in text.stdout
    finally:
        with store.session() as s:
            row = s.get(m.Measurement, best_id)
            row.figures, row.tokens_per_s = saved


def test_gate_bad_input_is_one_line(tiny_model, api_db):
    r = _verify("--best", "no-such-model", "--db", api_db)
    assert r.exit_code == 1 and "no recipe for 'no-such-model'" in r.output and "Traceback" not in r.output
    r = _verify("--db", api_db)
    assert r.exit_code == 2 and "one of them" in r.output


def test_quality_below_the_floor_fails_and_config_only_skips_it():
    from autotune.budget import parse_budget, regression_checks
    from autotune.figures import Figures

    stored = Figures(tokens_per_s=100.0, tpot_ms_p50=10.0, ttft_ms_p50=5.0, quality=0.99)
    now = Figures(tokens_per_s=99.0, tpot_ms_p50=10.1, ttft_ms_p50=5.0, quality=0.90)
    checks = {c.figure: c for c in regression_checks(stored, now, 0.95, parse_budget("quality>=0.97"))}
    assert checks["tokens_per_s"].ok and checks["tpot_ms_p50"].ok and not checks["quality"].ok
    assert checks["quality"].line().startswith("FAIL quality: stored 0.990, now 0.900 (needs quality>=0.970)")
    now.quality_valid = False  # random weights: quality means nothing
    assert "quality" not in {c.figure for c in regression_checks(stored, now, 0.95, parse_budget(""))}
    now.quality, now.quality_valid = None, None  # quality not measured now: a failure, not a pass
    assert not {c.figure: c for c in regression_checks(stored, now, 0.95, parse_budget(""))}["quality"].ok


def test_the_default_objective_is_tokens_per_second_over_the_traffic_mix(tiny_model):
    """What will be served: ranked by TPOT alone, a loop whose long prompts ran 9x slower won."""
    from autotune.spec import build

    assert build(model=tiny_model).objectives == [("tokens_per_s", "maximize")]
    assert build(model=tiny_model, objective="tpot").objectives == [("tpot_ms_p50", "minimize")]
