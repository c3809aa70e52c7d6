"""`autotune bench` end to end, and bad input: one line, the right exit code, no traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from autotune.cli import cli

FAST_BENCH = ["--prompt-tokens", "8", "--new-tokens", "6", "--max-context", "64"]


def test_bench_json_reports_recipe_baseline_and_ratio(tiny_model):
    result = CliRunner().invoke(cli, ["bench", tiny_model, "--set", "cache.implementation=static",
                                      *FAST_BENCH, "--json"])
    assert result.exit_code == 0, result.output
    p = json.loads(result.stdout)
    for key in ("status", "tpot_ms_p50", "ttft_ms_p50", "tokens_per_s", "peak_memory_bytes", "cv", "quality"):
        assert key in p and key in p["baseline"], key
    assert p["status"] == "ok" and p["baseline"]["status"] == "ok"
    assert p["ratio"]["tokens_per_s"] == pytest.approx(p["tokens_per_s"] / p["baseline"]["tokens_per_s"])
    assert p["recipe"]["cache"]["implementation"] == "static"
    assert p["target"]["device"] in ("cpu", "cuda")


@pytest.mark.slow
def test_bench_compiled_decode_loop(tiny_model):
    """Static cache + compiled decode step, text output (on CUDA with CUDA graphs)."""
    import torch

    mode = "reduce-overhead" if torch.cuda.is_available() else "default"
    result = CliRunner().invoke(cli, ["bench", tiny_model, "--set", "cache.implementation=static",
                                      "--set", "compile.target=decode", "--set", f"compile.mode={mode}",
                                      *FAST_BENCH])
    assert result.exit_code == 0, result.output
    assert "ratio:" in result.output and "tokens/s" in result.output
    # scored through the compiled decode step itself: compilation keeps the numerics
    row = next(line for line in result.output.splitlines() if line.startswith("quality (top-1 agreement)"))
    assert float(row.split()[-1]) >= 0.95, row


def test_config_only_says_quality_is_not_valid(tiny_model):
    result = CliRunner().invoke(cli, ["bench", tiny_model, "--config-only", *FAST_BENCH])
    assert result.exit_code == 0, result.output
    assert "config-only model (random weights)" in result.output


def test_a_choice_that_is_the_same_program_here_is_refused_with_the_reason(tiny_model):
    result = CliRunner().invoke(cli, ["bench", tiny_model, "--set", "cache.implementation=static",
                                      "--set", "compile.target=decode", "--set", "compile.mode=reduce-overhead",
                                      *FAST_BENCH])
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA graphs exist here")
    assert result.exit_code == 1 and "CUDA graphs only" in result.output


@pytest.mark.parametrize("args,code,text", [
    (["bench", "{model}", "--set", "warp.drive=on"], 2, "unknown plugin 'warp'"),
    (["bench", "{model}", "--set", "cache.size=3"], 2, "unknown option cache.size"),
    (["bench", "{model}", "--set", "cache.implementation=huge"], 2, "not one of"),
    (["bench", "{model}", "--set", "cache.implementation"], 2, "malformed --set"),
    (["bench", "/no/such/dir/model"], 1, "is not a directory, a .gguf file, a hub id"),
    (["bench", "{broken}"], 1, "not valid JSON"),
    (["bench", "{empty}"], 1, "has no config.json"),
    (["search", "{model}", "--budget", "tpot<=3"], 2, "budget grammar"),
    (["search", "{model}", "--study-file", "/no/such.toml"], 2, "cannot read study file"),
    (["search", "{model}", "--jobs", "0"], 2, "--jobs must be a positive whole number or auto"),
    (["search", "{model}", "--submit", "--jobs", "2"], 2, "a queued job's are the daemon's --workers"),
    (["search", "{model}", "--submit", "--remeasure"], 2, "--remeasure applies to a search run here"),
])
def test_bad_input(args, code, text, tiny_model, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(model=tiny_model, broken=broken, empty=empty) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "autotune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "search" in out.stdout


def test_search_prints_only_its_own_progress_and_summary(tiny_model, tmp_path):
    """No library chatter (torchao's missing CUDA kernels, deprecation notices, Optuna's experimental
    notes, transformers' progress bars) on the terminal of a CPU search; ``-v`` lets it through."""
    import os
    import re

    db = f"sqlite:///{tmp_path / 'quiet.db'}"
    args = [sys.executable, "-m", "autotune", "search", tiny_model, "--trials", "2", "--db", db, "--prompt-tokens", "8",
            "--new-tokens", "4", "--max-context", "32", "--config-only"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = re.compile(r"^(study |budget: |\s*$|.*\d+/2 \[|.*\|\s*\d+/2)")
    lines = [line for line in re.split(r"[\r\n]", proc.stderr)]
    strangers = [line for line in lines if not ours.match(line)]
    assert not strangers, strangers
    assert proc.stdout.startswith("study ") and "best: recipe" in proc.stdout
