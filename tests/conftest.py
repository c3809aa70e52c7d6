"""Fixtures: a temporary user directory (never the real home), tiny random-weight models saved and
loaded through the real from_pretrained path, and a real SQLite database per test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autotune.testing import build_tiny_model  # noqa: F401 - tests import it from here too

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # so spawned trial processes can import tests' own plugin modules


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One cache dir for the session: the real smollm2 is converted once, not per test."""
    return tmp_path_factory.mktemp("autotune-cache")


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, model_cache, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("AUTOTUNE_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield


@pytest.fixture
def chaos():
    """The test plugins (tests/plugins_for_tests.py) registered for one test: the optimizations then."""
    import plugins_for_tests
    from autotune.registry import get_optimizations, pm

    pm.register(plugins_for_tests, name="plugins_for_tests")
    try:
        yield get_optimizations()
    finally:
        pm.unregister(name="plugins_for_tests")


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('shared') / 'tune.db'}"


@pytest.fixture
def db_url(request, tmp_path) -> str:
    """Tests that use the module's shared search (``searched``) read its database; the others get their own."""
    if "searched" in request.fixturenames:
        return request.getfixturevalue("shared_db")
    return f"sqlite:///{tmp_path / 'tune.db'}"


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_model, shared_db):
    """One real search shared by a module's tests that read its results (each trial is a real process)."""
    f = study_file(tmp_path_factory.mktemp("study"), tiny_model)
    result, payload = cli_search(["--study-file", f, "--study", "s1"], shared_db)
    assert result.exit_code == 0, result.output
    return payload


#: fast measurement for tests: a few runs, no long CV wait, and no candidate abandoned as hopeless — a
#: tiny model's timings are noise (a test about abandoning asks for it: :data:`ABANDONING`)
FAST = {"min_runs": 2, "max_runs": 3, "max_measure_s": 5, "abandon_factor": 0, "screen_factor": 0, "race_factor": 0}
ABANDONING = {**FAST, "abandon_factor": 3.0}
#: choices a test study keeps fixed unless it names them: search-mechanics tests are not about threads,
#: decoding or the LM head, and a random pick of them (1 thread, prompt lookup) changes which trials get
#: pruned, or (an int4 head on a random-weight model) leaves no candidate above the quality floor
PINNED = {"runtime.threads": ["auto"], "decoding.method": ["greedy"], "quantization.head": ["keep"]}


def write_study(folder: Path, model: str, space: dict, pin: bool = True, **top) -> str:
    """A study definition for a fast test: a short workload, the FAST measurement policy, ``space``
    (``"plugin.option" -> [choices]``, with :data:`PINNED` unless ``pin=False``) and any top-level keys
    (trials, sampler, budget...)."""
    import json

    lines = [f"model = {json.dumps(model)}"] + [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += ["[workload]", "prompt_tokens = 8", "new_tokens = 6", "max_context = 64", "[measure]"]
    lines += [f"{k} = {v}" for k, v in FAST.items()]
    space = {**(PINNED if pin else {}), **space}
    lines += ["[space]"] + [f'"{k}" = {json.dumps(v)}' for k, v in space.items()]
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


#: the search space of the shared search: nothing compiled, two quantizations, two cache ladders
SPACE = {"compile.target": ["off"], "quantization.method": ["none", "torchao-int8-weight"], "dtype.dtype": ["auto"],
         "attention.implementation": ["sdpa"], "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"],
         "cache.ladder": ["x2", "one"], "runtime.threads": ["auto"], "decoding.method": ["greedy"]}


def study_file(tmp_path, model, trials=3, **space) -> str:
    if any(k.startswith("chaos.") for k in space):  # the test plugins are loaded: keep decode steps clean
        space = {"corrupt.decode": ["clean"], **space}
    return write_study(tmp_path, model, {**SPACE, **space}, trials=trials)


def cli_search(args, db_url):
    """``autotune search ... --json`` through click: (result, payload or None)."""
    import json

    from click.testing import CliRunner

    from autotune.cli import cli

    result = CliRunner().invoke(cli, ["search", *args, "--db", db_url, "--json"])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


@pytest.fixture(autouse=True)
def cuda_toolkit(monkeypatch):
    """Tests' stand-in CUDA targets (an H100 on this CPU host) have a CUDA toolkit, as GPU hosts do:
    AOTInductor and the C++ wrapper on CUDA are unavailable without one (test_cuda_paths checks that)."""
    from autotune.plugins import compile as compile_plugin

    monkeypatch.setattr(compile_plugin, "_cuda_home", lambda: "/usr/local/cuda")
