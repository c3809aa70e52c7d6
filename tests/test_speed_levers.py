"""The speed levers of the speed issue, each checked against what would make its figure wrong:
prompt lookup keeps greedy output and is scored through its own multi-token verification path,
TPOT counts tokens (not streamer puts), threads reach the calls, workloads have kinds, and a decode
step faster than the memory roofline is refused as a measurement bug."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST

from autotune import roofline
from autotune.cli import cli
from autotune.evaluate import evaluate, place_on_roofline
from autotune.figures import Figures
from autotune.measure import TimingStreamer, forcing_processor
from autotune.recipe import resolve
from autotune.registry import get_optimizations
from autotune.sources import resolve_model
from autotune.spec import MeasurePolicy
from autotune.target import current_target
from autotune.workload import Workload

POLICY = MeasurePolicy(**FAST)


def measure(model, partial, workload, baseline=None):
    opts = get_optimizations()
    return evaluate(resolve_model(model), resolve(partial, opts), workload, current_target("cpu"), opts,
                    baseline=baseline, timeout=180, policy=POLICY)


def test_prompt_lookup_keeps_greedy_output_and_is_scored_through_its_own_path(tiny_model):
    """Prompt lookup verifies several proposed tokens per forward pass. Its greedy tokens must equal
    plain greedy's, and the forced quality calls must go through the same verification (the
    processor sees positions again after a rejected proposal): quality equal to the baseline's."""
    workload = Workload(kind="code-edit", prompt_tokens=48, new_tokens=16)
    base = measure(tiny_model, {}, workload)
    lookup = measure(tiny_model, {"decoding": {"method": "prompt-lookup", "num_tokens": 5, "max_ngram": 1}},
                     workload, baseline=base)
    assert base.ok and lookup.ok, (base.error, lookup.error)
    assert lookup.figures.greedy_match == 1.0 and lookup.figures.first_divergence is None
    assert lookup.figures.quality == 1.0
    assert len(lookup.figures.top1) == len(base.figures.top1)
    assert lookup.figures.tokens_per_step >= 1.0 and base.figures.tokens_per_step == pytest.approx(1.0)


def test_forcing_processor_keeps_the_last_score_of_each_position():
    forced = torch.tensor([[5, 6, 7]])
    force = forcing_processor(forced)
    vocab = 10

    def scores(best):
        s = torch.zeros(1, vocab)
        s[0, best] = 1.0
        return s

    out = force(torch.zeros(1, 4, dtype=torch.long), scores(1))  # position 0 (prompt of 4)
    assert out.argmax(-1).item() == 5
    force(torch.zeros(1, 5, dtype=torch.long), scores(2))  # position 1, on a proposal later rejected
    force(torch.zeros(1, 6, dtype=torch.long), scores(3))  # position 2, likewise
    force(torch.zeros(1, 5, dtype=torch.long), scores(6))  # position 1 again, on the accepted prefix
    force(torch.zeros(1, 6, dtype=torch.long), scores(7))
    assert [t.item() for t in force.top1] == [1, 6, 7]


def test_tpot_is_per_token_when_a_step_brings_several():
    s = TimingStreamer()
    s.start = 0.0
    for t, value in ((0.01, torch.zeros(1, 8)), (0.10, torch.zeros(1)), (0.20, torch.zeros(1)),
                     (0.50, torch.zeros(1, 3))):  # the last put: three accepted tokens in 0.3 s
        s.put(value)
        s.times[-1] = t
    assert s.ttft == pytest.approx(0.10)
    assert s.tpots == pytest.approx([0.10, 0.10, 0.10, 0.10])
    assert s.steps == 2 and len(s.tpots) == 4
    # bursty steps: a slow one-token step and a fast ten-token one must not read as 10 ms per token
    b = TimingStreamer()
    b.start = 0.0
    for t, value in ((0.0, torch.zeros(1, 8)), (0.1, torch.zeros(1)), (0.2, torch.zeros(1)),
                     (0.3, torch.zeros(1)), (0.4, torch.zeros(1, 10))):
        b.put(value)
        b.times[-1] = t
    assert b.tpots == pytest.approx([0.3 / 12] * 12)  # not a median of 0.01


def test_threads_reach_every_call(tiny_model):
    from autotune.apply import apply_recipe
    from autotune.optimization import ApplyContext

    opts = get_optimizations()
    recipe = resolve({"runtime": {"threads": 1}}, opts)
    applied = apply_recipe(tiny_model, opts, recipe, ApplyContext(current_target("cpu"), "cpu", 4, 8, 1, recipe))
    seen = []
    real = applied.generate_fn
    applied.generate_fn = lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1]
    before = torch.get_num_threads()
    applied.generate_ids(torch.tensor([[1, 2, 3]]), max_new_tokens=2, min_new_tokens=2)
    assert seen == [1] and torch.get_num_threads() == before


def test_threads_equal_to_the_default_or_above_the_cores_are_unavailable():
    unavailable = get_optimizations()["runtime"].unavailable(current_target("cpu"))
    assert f"threads={torch.get_num_threads()}" in unavailable
    assert "threads=128" in unavailable and "cores" in unavailable["threads=128"]


def test_unknown_workload_kind_is_one_line(tiny_model):
    result = CliRunner().invoke(cli, ["bench", tiny_model, "--workload", "poetry"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_step_faster_than_memory_allows_is_an_invalid_measurement():
    target = current_target("cpu")
    bandwidth = roofline.memory_bandwidth(target.device, target.hardware_key)
    assert 1e9 < bandwidth < 1e13  # a plausible memory, measured once per machine
    step = 2 * 2**30
    honest = Figures(tpot_ms_p50=step / bandwidth * 1e3 * 2, bytes_per_step=step, tokens_per_step=1.0)
    assert place_on_roofline(honest, target) is None and honest.mbu == pytest.approx(0.5)
    too_fast = Figures(tpot_ms_p50=step / bandwidth * 1e3 / 3, bytes_per_step=step, tokens_per_step=1.0)
    assert "invalid measurement" in place_on_roofline(too_fast, target)
    # several tokens per forward pass (prompt lookup) legitimately beat the one-token roofline
    lookup = Figures(tpot_ms_p50=step / bandwidth * 1e3 / 3, bytes_per_step=step, tokens_per_step=4.0)
    assert place_on_roofline(lookup, target) is None


def test_a_probe_that_under_read_the_bandwidth_is_probed_again_not_blamed_on_the_step(tmp_path, monkeypatch):
    """A cached probe taken beside a busy process (a fifth of the machine's bandwidth here) made an
    honest HF-default step "faster than memory allows" in CI: the probe is taken again, and kept."""
    import json

    target = current_target("cpu")
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    roofline.memory_bandwidth.cache_clear()
    try:
        real = roofline.memory_bandwidth(target.device, target.hardware_key)
        cached = tmp_path / "bandwidth" / f"{target.hardware_key}.json"
        cached.write_text(json.dumps({"bytes_per_s": real / 5}))
        roofline.memory_bandwidth.cache_clear()
        step = 2 * 2**30
        honest = Figures(tpot_ms_p50=step / real * 1e3 * 1.5, bytes_per_step=step, tokens_per_step=1.0)
        assert place_on_roofline(honest, target) is None, honest.mbu
        assert json.loads(cached.read_text())["bytes_per_s"] > real / 2
    finally:
        roofline.memory_bandwidth.cache_clear()


def test_measured_trials_report_their_roofline(tiny_model):
    ev = measure(tiny_model, {}, Workload(prompt_tokens=8, new_tokens=6))
    assert ev.ok, ev.error
    f = ev.figures
    assert f.bytes_per_step > f.weights_bytes  # the weights plus the KV cache read
    assert 0 < f.mbu < 1


def test_gpu_benchmark_says_so_on_a_host_without_cuda():
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA host runs the real benchmark")
    script = Path(__file__).parent.parent / "benchmarks" / "gpu.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == ["benchmarks/gpu.py: no CUDA device on this host; nothing measured "
                                                "(run it on a GPU host)"]


@pytest.mark.parametrize("option,value,inductor_key", [
    ("freezing", True, "freezing"), ("cpp_wrapper", True, "cpp_wrapper"),
    ("mode", "max-autotune-no-cudagraphs", "max_autotune")])
def test_inductor_options_reach_the_compiled_decode_step(tiny_model, option, value, inductor_key):
    """What the decode loop hands torch.compile for its one-token step carries the chosen inductor
    option (max-autotune's C++ GEMM templates, freezing's weight pre-packing, the C++ wrapper)."""
    from autotune.testing import program_of

    opts = get_optimizations()
    base = program_of(opts["compile"], {"target": "decode"}, tiny_model)["compiled"]  # records, compiles nothing
    chosen = program_of(opts["compile"], {"target": "decode", option: value}, tiny_model)["compiled"]
    assert [name for name, _ in chosen] == ["decode_step"]
    assert f"'{inductor_key}': True" in chosen[0][1] and f"'{inductor_key}': True" not in base[0][1]


def test_prompt_lookup_runs_in_a_static_cache_filled_to_its_rung(tiny_model):
    """Measured before envelopes: a static cache sized to the call overflowed when proposals were
    verified past the last token (IndexError in index_copy_). A rung keeps room past its capacity:
    a repetitive call that fills its rung exactly still runs."""
    from autotune.apply import apply_recipe
    from autotune.optimization import ApplyContext

    opts = get_optimizations()
    recipe = resolve({"decoding": {"method": "prompt-lookup"}, "cache": {"implementation": "static", "ladder": "one"}},
                     opts)
    ctx = ApplyContext(current_target("cpu"), "cpu", 6, 8, 1, recipe, max_context=64)
    applied = apply_recipe(tiny_model, opts, recipe, ctx)
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10] * 9 + [5, 6, 7, 8]])  # 58 tokens: 58 + 6 = the whole rung
    out = applied.generate_ids(prompt, max_new_tokens=6, min_new_tokens=6)
    assert out.shape == (1, 64)


def test_aoti_decode_step_keeps_greedy_output_and_is_compiled_once(tiny_model):
    """compile.target=aoti: the exported program's tokens are the model's greedy tokens (fp32: equal
    to the baseline), scored through its own loop; the package is cached on disk, so a second trial
    loads it (no new package, a far shorter first call) and another shape compiles its own."""
    from autotune.paths import cache_dir

    workload = Workload(prompt_tokens=8, new_tokens=6)
    aoti = {"cache": {"implementation": "static"}, "compile": {"target": "aoti"}}
    base = measure(tiny_model, {}, workload)
    packages = cache_dir() / "aoti"
    before = set(packages.glob("*.pt2")) if packages.exists() else set()
    first = measure(tiny_model, aoti, workload, baseline=base)
    assert base.ok and first.ok, (base.error, first.error)
    assert first.figures.greedy_match == 1.0 and first.figures.quality == 1.0
    built = set(packages.glob("*.pt2")) - before
    assert len(built) == 1
    again = measure(tiny_model, aoti, workload, baseline=base)
    assert again.ok and set(packages.glob("*.pt2")) - before == built
    assert again.figures.first_call_s < first.figures.first_call_s / 2
    longer = measure(tiny_model, aoti, Workload(prompt_tokens=8, new_tokens=10), baseline=None)
    assert longer.ok and len(set(packages.glob("*.pt2")) - before) == 2


def test_aoti_rules():
    """What cannot be exported ahead of time is a rule, not a trial that errors (measured: bnb's
    parameters fail torch.export), and the loop needs its static cache."""
    from autotune.recipe import impossible

    opts, target = get_optimizations(), current_target("cpu")
    aoti = {"cache": {"implementation": "static"}, "compile": {"target": "aoti"}}
    assert impossible(resolve(aoti, opts), opts, target) is None
    assert "bitsandbytes" in impossible(resolve({**aoti, "quantization": {"method": "bnb-int8"}}, opts), opts, target)
    assert "static" in impossible(resolve({"compile": {"target": "aoti"}}, opts), opts, target)
    assert "cpp_wrapper" not in resolve(aoti, opts)["compile"]  # AOTInductor's wrapper is C++ anyway
