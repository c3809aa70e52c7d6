"""The HTML report of a small real study, opened in a real headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from conftest import write_study

import plugins_for_tests
from autotune.cli import cli
from autotune.registry import pm

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def study_db(tmp_path_factory, tiny_model):
    """A real grid study: 4 trials, one raising (failed), one 4-bit over the quality floor."""
    tmp = tmp_path_factory.mktemp("report")
    study = write_study(tmp, tiny_model, {
        "chaos.behaviour": ["none", "raise"], "quantization.method": ["none", "bnb-4bit"],
        "quantization.quant_type": ["fp4"], "quantization.double_quant": [False],
        "quantization.compute_dtype": ["float32"], "dtype.dtype": ["auto"], "attention.implementation": ["sdpa"],
        "attention.sdpa_backend": ["auto"], "attention.gqa": ["auto"], "cache.implementation": ["dynamic", "static"],
        "cache.ladder": ["x2"], "compile.target": ["off"], "corrupt.decode": ["clean"],
    }, trials=4, sampler="grid", budget="quality>=0.99", jobs=1)  # the grid in its order, one at a time
    db = f"sqlite:///{tmp / 'tune.db'}"
    pm.register(plugins_for_tests, name="plugins_for_tests")
    try:
        result = CliRunner().invoke(cli, ["search", "--study-file", study, "--study", "rep",
                                          "--db", db, "--trials", "6"])
    finally:
        pm.unregister(name="plugins_for_tests")
    assert result.exit_code == 0, result.output
    return db, tmp


def test_report_html_renders_in_chromium(study_db, tmp_path):
    db, _ = study_db
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "rep", "-o", str(out), "--db", db])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert not re.search(r'<(script|link)[^>]+(src|href)=["\']?https?:', page)  # self-contained, offline
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js itself is inlined
    n_trials = int(re.search(r"wrote .*: (\d+) trials", result.output).group(1))
    assert n_trials >= 4
    assert "error" in page and "over budget" in page
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    profile = tmp_path / "profile"
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and
                      ("Uncaught" in line or "Error" in line)]
    assert not console_errors, console_errors
    pareto = dom.stdout.split('id="fig1"')[0]
    assert "<svg" in pareto
    points = pareto.count('class="point"')
    assert points >= n_trials, f"{points} marks for {n_trials} trials"  # one mark per trial (+ the star)
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1300,2400", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000


def test_report_png(study_db, tmp_path):
    db, _ = study_db
    out = tmp_path / "pareto.png"
    result = CliRunner().invoke(cli, ["report", "rep", "-o", str(out), "--db", db])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_unknown_study(study_db, tmp_path):
    db, _ = study_db
    result = CliRunner().invoke(cli, ["report", "nope", "-o", str(tmp_path / "x.html"), "--db", db])
    assert result.exit_code == 1 and "no study, job or model 'nope'" in result.output
    assert not (tmp_path / "x.html").exists()


def test_report_without_the_report_extra_names_it(study_db, tmp_path):
    from test_plugins import _without

    db, _ = study_db
    out = _without(("plotly",), "report", "rep", "-o", str(tmp_path / "r.html"), "--db", db)
    assert out.returncode == 1 and "pip install 'autotune[report]'" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "r.html").exists()


def test_the_measured_share_counts_the_calls_the_figures_came_from():
    """A trial whose envelope pass and warm call were its one round (screened there, or a time-boxed
    search's HF default) spent those seconds in measured windows; a reused or deferred one spent none."""
    from types import SimpleNamespace

    from autotune.figures import Figures
    from autotune.report_text import time_split

    rows = [Figures(wall_s=40.0, measure_s=10.0, envelope_pass_s=6.0, warmup_s=1.0, runs=3, shapes=[{}]),
            Figures(wall_s=30.0, measure_s=0.0, envelope_pass_s=5.0, warmup_s=2.0, runs=1, shapes=[{}]),
            Figures(wall_s=25.0, measure_s=0.0, envelope_pass_s=9.0, warmup_s=3.0),  # abandoned: no figures
            Figures(phase="deferred")]
    split = time_split([SimpleNamespace(reused=False, figures=f) for f in rows], search_wall_s=100.0)
    assert split["timed_s"] == 17.0 and split["measured_share"] == 0.17 and split["trials_measured"] == 3
    # a study resumed (by another host of the team): its earlier run's trials took none of this run's time
    resumed = [SimpleNamespace(reused=False, earlier=i == 0, figures=f) for i, f in enumerate(rows)]
    split = time_split(resumed, search_wall_s=100.0)
    assert split["timed_s"] == 7.0 and split["trials_measured"] == 2
    # a trial whose pass was the first of its rounds (pass_first): that pass and the rounds after it
    rows[0].pass_first = True
    assert time_split([SimpleNamespace(reused=False, figures=f) for f in rows])["timed_s"] == 24.0


def test_the_summary_counts_the_losers_measured_on_sampled_decode():
    """Screened losers whose long shapes' decode was sampled are counted, and said so, in the summary."""
    from types import SimpleNamespace

    from autotune.figures import Figures
    from autotune.report_text import counts_text, outcome_counts
    from autotune.states import Status

    rows = [Figures(screened=True, decode_sampled=16), Figures(screened=True), Figures()]
    counts = outcome_counts([SimpleNamespace(status=Status.OK, feasible=True, figures=f) for f in rows])
    assert (counts["with_figures"], counts["screened"], counts["sampled"]) == (3, 2, 1)
    assert "2 screened: measured no further once slower than the best so far, 1 of them on sampled decode)" \
        in counts_text(counts)
    assert counts_text(counts).startswith("recipes with figures: 3 (3 within")  # "this run": said only when fewer
    counts = outcome_counts([SimpleNamespace(status=Status.OK, feasible=True, figures=f, reused=False, earlier=i > 0)
                             for i, f in enumerate(rows)])
    assert counts_text(counts).startswith("recipes with figures: 3 (1 measured by this run; 3 within the budget")
    from autotune.report_text import notes

    assert "its longer shapes decoded 16 of their new tokens" in notes(rows[0], Figures())[0]
    assert "decoded" not in notes(rows[1], Figures())[0]


def test_why_ratios_are_loose_is_said_once_for_every_output():
    """A baseline measured in one round (a time-boxed search's HF default) or noisy makes ratios loose:
    one reason, the same in the ratios' JSON, the summary's note and the show text."""
    from autotune.figures import Figures
    from autotune.report_text import loose_baseline, noisy_note, notes, ratios

    one_round = {"runs": 1, "tokens_per_s": 10.0}
    noisy = {"runs": 5, "noisy": True, "cv": 0.2, "tokens_per_s": 10.0}
    tight = {"runs": 3, "noisy": False, "cv": 0.01, "tokens_per_s": 10.0}
    candidate = {"runs": 3, "tokens_per_s": 30.0}
    assert "one round" in loose_baseline(one_round) and "CV 0.200" in loose_baseline(noisy)
    assert loose_baseline(tight) is None and noisy_note(tight) == "" and ratios(candidate, tight)["loose"] is None
    for base in (one_round, noisy):
        assert ratios(candidate, base)["loose"] == loose_baseline(base)
        assert loose_baseline(base) in noisy_note(base)
        shown = notes(Figures(runs=3, tokens_per_s=30.0), Figures(**base))
        assert f"  note: {loose_baseline(base)}: ratios are loose" in shown, shown
    assert notes(Figures(runs=3), Figures(**tight)) == []
