"""The trial's own process: it does not depend on how the caller was started (a plain script, a
script read from stdin, a ``__main__`` guard or none), a child that dies before it reports says why,
and the fork server cannot poison CUDA for the trials it forks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune.states import Status

pytestmark = pytest.mark.filterwarnings("ignore")

SCRIPT = """
import autotune

result = autotune.search({model!r}, trials=1, workload={{"prompt_tokens": 8, "new_tokens": 4, "max_context": 32}},
                         space={{"compile.target": ["off"]}}, measure={{"min_runs": 2, "max_runs": 2}},
                         db={db!r}, progress=False)
print("BASELINE", result.baseline["status"])
"""


def _script(model: str, db: str, guarded: bool) -> str:
    body = SCRIPT.format(model=model, db=db)
    if guarded:
        body = "if __name__ == '__main__':\n" + textwrap.indent(body, "    ")
    return body


@pytest.mark.parametrize("how", ["file", "file-guarded", "stdin"])
def test_search_from_a_plain_script(how, tmp_path, tiny_model):
    """``python example.py`` calling ``autotune.search`` at module level (and under a ``__main__``
    guard, and piped to ``python -``): the trial processes do not run the caller's script again."""
    db = f"sqlite:///{tmp_path / 'script.db'}"
    code = _script(tiny_model, db, guarded=how == "file-guarded")
    env = {**os.environ, "PYTHONPATH": ""}
    if how == "stdin":
        proc = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=600)
    else:
        script = tmp_path / "example.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("BASELINE ok") == 1, proc.stdout  # the script ran once, its trials did not re-run it
    assert proc.stderr.strip() == "", proc.stderr[-3000:]  # and no library chatter on the way


class Unpicklable:
    """Pickled by reference to a module the trial process cannot import: it dies while it starts."""


def test_a_child_that_dies_before_it_reports_says_why(tiny_model, tmp_path, monkeypatch):
    import types

    from autotune.isolate import run_isolated
    from autotune.trial import TrialRequest

    ghost = types.ModuleType("ghost_module_only_in_the_parent")
    ghost.Unpicklable = Unpicklable
    Unpicklable.__module__ = ghost.__name__
    monkeypatch.setitem(sys.modules, ghost.__name__, ghost)
    try:
        request = TrialRequest(model_path=tiny_model, recipe={"x": Unpicklable()}, workload={}, device="cpu",
                               policy={})
        outcome = run_isolated(request, timeout=60)
    finally:
        Unpicklable.__module__ = __name__
    assert outcome.status == Status.CRASH
    assert "before it started" in outcome.error
    assert "ghost_module_only_in_the_parent" in outcome.error  # the child's own last words


def test_the_fork_server_cannot_poison_cuda(tiny_model):
    """The server preloads transformers, whose imports call ``torch.cuda.is_available()``: it runs
    with the NVML-based check, which never initialises CUDA, so its forked trials may use CUDA."""
    from autotune.isolate import process

    process.context()
    pid = process.server_pid()
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
    assert environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"


def test_a_trial_in_a_bad_fork_says_so_in_one_line(monkeypatch):
    import torch

    from autotune.isolate import process

    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(RuntimeError, match="forked after CUDA was initialised"):
        process.check_cuda_fork("cuda")
    process.check_cuda_fork("cpu")  # a CPU trial does not care


def test_where_cuda_is_visible_the_fork_server_preloads_nothing_that_initialises_it(monkeypatch):
    """On the first H200 run every trial failed: importing ``transformers.modeling_utils`` imports
    torchao, whose modules ask the device's capability at import, so the fork server held a CUDA
    context. Here a GPU is pretended (``is_available`` says yes) and any CUDA initialisation is
    recorded, in a fresh interpreter that imports what the server would preload."""
    import subprocess
    import sys

    from autotune.isolate import process

    monkeypatch.setattr(process, "_cuda_visible", lambda: True)
    with_cuda = process.preload()
    monkeypatch.setattr(process, "_cuda_visible", lambda: False)
    assert set(with_cuda) < set(process.preload())  # without CUDA the server preloads more
    assert "transformers.modeling_utils" not in with_cuda
    probe = """
import sys, torch, torch.cuda
inits = []
def lazy_init():
    inits.append(1)
    raise RuntimeError("CUDA initialised")
torch.cuda.is_available = lambda: True
torch.version.cuda = "13.0"  # a CUDA build, as the modules that ask check
torch.cuda._lazy_init = lazy_init
for name in sys.argv[1:]:
    try:
        __import__(name)
    except RuntimeError:
        pass
print(len(inits))
"""
    out = subprocess.run([sys.executable, "-c", probe, *with_cuda], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "0", out.stderr[-2000:]
    try:  # the probe sees what it is for: torchao 0.18, imported by modeling_utils, asks the device
        import torchao  # noqa: F401
    except ImportError:
        return
    out = subprocess.run([sys.executable, "-c", probe, *with_cuda, *process.PRELOAD_WITHOUT_CUDA],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] != "0", out.stderr[-2000:]
