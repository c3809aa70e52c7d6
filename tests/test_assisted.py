"""Assisted decoding with a draft the user names (``--draft``): the draft is given by the study, not
searched; greedy output stays the model's own; the draft travels with the recipe into the
database, the export and ``autotune.load``; a study without a fitting draft leaves the choice out
with the reason."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
import test_speed_levers as speed_levers
from conftest import write_study

from autotune.cli import cli
from autotune.errors import AutotuneError
from autotune.optimization import ModelInfo
from autotune.recipe import impossible, resolve
from autotune.registry import get_optimizations
from autotune.sources import resolve_model
from autotune.target import current_target
from autotune.testing import build_tiny_model
from autotune.workload import Workload

WORKLOAD = Workload(kind="code-edit", prompt_tokens=48, new_tokens=16)


@pytest.fixture(scope="module")
def draft(tmp_path_factory) -> str:
    """A one-layer model with the tiny model's tokenizer (another random init: it proposes badly)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-draft"), layers=1))


def measure(model, partial, baseline=None):
    return speed_levers.measure(model, partial, WORKLOAD, baseline)


def test_assisted_decoding_keeps_the_models_greedy_output(tiny_model, draft):
    """A poor draft (other weights) and a perfect one (the model itself): the tokens are the
    model's greedy tokens either way, scored through the assisted path; only the perfect draft
    brings several tokens per forward pass of the model (with no confidence floor: a random-weight
    draft is never confident)."""
    base = measure(tiny_model, {})
    poor = measure(tiny_model, {"decoding": {"method": "assisted", "draft": draft, "draft_tokens": 5}}, baseline=base)
    perfect = measure(tiny_model, {"decoding": {"method": "assisted", "draft": tiny_model,
                                                "schedule": "constant", "draft_tokens": 5, "confidence": 0.0}},
                      baseline=base)
    for ev in (base, poor, perfect):
        assert ev.ok, ev.error
    for ev in (poor, perfect):
        assert ev.figures.greedy_match == 1.0 and ev.figures.first_divergence is None
        assert ev.figures.quality == 1.0
    assert perfect.figures.tokens_per_step > 2.0
    assert base.figures.tokens_per_step == pytest.approx(1.0)


def test_every_assisted_knob_changes_what_runs(tiny_model, draft):
    from autotune.testing import check_choices_change_what_runs

    checked = check_choices_change_what_runs(get_optimizations()["decoding"], tiny_model, given={"draft": draft})
    for choice in ("method=assisted", "draft_tokens=3", "schedule=constant", "confidence=0.0"):
        assert choice in checked


def test_assisted_is_unavailable_without_a_fitting_draft(tiny_model, tmp_path):
    decoding, target = get_optimizations()["decoding"], current_target("cpu")
    mine = resolve_model(tiny_model).info()
    assert "--draft" in decoding.unavailable(target, mine)["method=assisted"]
    other = ModelInfo({**mine.config, "vocab_size": mine.config["vocab_size"] + 7})
    reason = decoding.unavailable(target, ModelInfo(mine.config, draft=other))["method=assisted"]
    assert "vocabulary" in reason
    assert decoding.unavailable(target, ModelInfo(mine.config, draft=mine)) == {}
    opts = get_optimizations()
    assert "needs a draft model" in impossible(resolve({"decoding": {"method": "assisted"}}, opts), opts, target)


def test_search_with_a_draft_exports_a_recipe_that_loads_with_it(tiny_model, draft, tmp_path, db_url):
    """--draft end to end: the space has assisted decoding with this draft, the stored recipe
    names it, the export carries it, and autotune.load serves the model's greedy text with it."""
    import autotune

    from conftest import SPACE

    space = {**SPACE, "quantization.method": ["none"], "decoding.method": ["assisted"], "decoding.draft_tokens": [3, 5],
             "decoding.schedule": ["heuristic"], "decoding.confidence": [0.4]}
    study = write_study(tmp_path, tiny_model, space, trials=2, sampler="grid", budget="quality>=0.5")
    runner = CliRunner()
    out = runner.invoke(cli, ["search", "--study-file", study, "--draft", draft, "--db", db_url, "--json"])
    assert out.exit_code == 0, out.output
    best = json.loads(out.output)["best"][0]
    assert best["recipe"]["decoding"] == {"method": "assisted", "draft": draft, "draft_tokens": best["recipe"]
                                          ["decoding"]["draft_tokens"], "schedule": "heuristic", "confidence": 0.4}
    path = tmp_path / "recipe.json"
    exported = runner.invoke(cli, ["export", str(best["measurement_id"]), "-o", str(path), "--db", db_url])
    assert exported.exit_code == 0, exported.output
    assert json.loads(path.read_text())["recipe"]["decoding"]["draft"] == draft
    tuned = autotune.load(str(path))
    doc = json.loads(path.read_text())
    doc["recipe"]["decoding"] = {"method": "greedy"}
    plain = autotune.load(doc)
    assert tuned.applied.generate_fn.__name__ != plain.applied.generate_fn.__name__
    ids = tuned.tokenizer("def add(a, b): return a + b\n# add two numbers", return_tensors="pt").input_ids
    assert tuned.generate_ids(ids, max_new_tokens=8, min_new_tokens=8).tolist() == \
        plain.generate_ids(ids, max_new_tokens=8, min_new_tokens=8).tolist()


def test_a_missing_draft_is_one_line(tiny_model, tmp_path):
    for args in (["search", tiny_model, "--draft", str(tmp_path / "nowhere"), "--trials", "1"],
                 ["bench", tiny_model, "--draft", str(tmp_path / "nowhere")],
                 ["plugins", "--draft", tiny_model]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_draft_is_part_of_what_a_measurement_stands_for(tiny_model, draft):
    """A study with another draft does not reuse this one's measurements."""
    from autotune.reuse import reuse_key
    from autotune.spec import build

    opts = get_optimizations()
    with_draft = build(model=tiny_model, draft=draft)
    assert with_draft.restrict["decoding.draft"] == [draft]
    keys = {reuse_key(build(model=tiny_model), opts), reuse_key(with_draft, opts),
            reuse_key(build(model=tiny_model, draft=tiny_model), opts)}
    assert len(keys) == 3
    with pytest.raises(AutotuneError, match="once"):
        build(model=tiny_model, draft=draft, space={"decoding.draft": [draft]})
