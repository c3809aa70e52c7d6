"""Trials side by side (``--jobs``): they load and compile at once, but every timed window runs alone —
the trial that measures stops every other trial's process group, and the stopped time is kept off
the others' limits and figures."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_study

from autotune import isolate
from autotune.errors import UsageError
from autotune.isolate import Gate, Member

pytestmark = pytest.mark.filterwarnings("ignore")


def state(pid: int) -> str:
    """The process's state letter: R running, S sleeping, T stopped."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    try:
        return state(pid) != "Z"
    except OSError:
        return False


def spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def test_the_holder_stops_every_other_trial_and_their_clocks_stand_still(tmp_path):
    procs = [spinner(), spinner()]
    try:
        gate = Gate()
        a, b = (Member(p.pid) for p in procs)
        gate.join(a)
        gate.join(b)
        assert gate.try_acquire(a) and not gate.try_acquire(b)
        time.sleep(0.3)
        assert state(procs[1].pid) == "T" and state(procs[0].pid) in "RS"
        frozen = b.clock()
        time.sleep(0.5)
        assert b.clock() == pytest.approx(frozen, abs=0.01)  # its limits do not run while it is stopped
        assert a.clock() - frozen > 0.4
        gate.release(a)
        time.sleep(0.3)
        assert state(procs[1].pid) in "RS" and b.clock() > frozen + 0.2
        # a trial that joins while another measures is stopped at once
        assert gate.try_acquire(b)
        c_proc = spinner()
        procs.append(c_proc)
        c = Member(c_proc.pid)
        gate.join(c)
        time.sleep(0.3)
        assert state(c_proc.pid) == "T" and state(procs[0].pid) == "T"
        gate.leave(b)  # the holder ends: everyone runs again
        time.sleep(0.3)
        assert state(c_proc.pid) in "RS" and state(procs[0].pid) in "RS"
        assert len(gate.windows) == 2 and all(end > start for start, end in gate.windows)
    finally:
        for p in procs:
            p.kill()
            p.wait()


class CheckingGate(Gate):
    """A gate that checks, at every window it opens, that every other trial's process is stopped."""

    instances: list["CheckingGate"] = []

    def __init__(self, lanes: int = 1):
        super().__init__(lanes)
        self.checked: list[list[str]] = []
        CheckingGate.instances.append(self)

    def try_acquire(self, member):
        fresh = self.holder is None
        got = super().try_acquire(member)
        if got and fresh:
            time.sleep(0.1)  # SIGSTOP is asynchronous
            self.checked.append([state(o.pid) for o in self._members - {member} if alive(o.pid)])
        return got


def test_two_lanes_measure_alone_and_keep_stopped_time_out_of_the_figures(chaos, tmp_path, tiny_model, monkeypatch):
    """One lane compiles (a first call of 4 s of CPU) while the other measures slowly: the compiling trial is
    stopped for the other's whole timed window, and its first call still reads 4 s, not 4 s plus
    the time it stood stopped."""
    from autotune.tuner import Search
    from autotune.spec import build, with_policy
    from autotune.store import Store

    monkeypatch.setenv("CHAOS_SLOW_S", "4")
    monkeypatch.setenv("CHAOS_CALL_S", "0.4")
    monkeypatch.setattr(isolate, "Gate", CheckingGate)
    CheckingGate.instances.clear()
    space = {"corrupt.decode": ["clean"], "chaos.behaviour": ["busy-compile", "slow-calls"],
             "compile.target": ["off"], "quantization.method": ["none"], "dtype.dtype": ["auto"],
             "attention.implementation": ["sdpa"], "cache.ladder": ["x2"], "runtime.threads": ["auto"],
             "decoding.method": ["greedy"]}
    f = write_study(tmp_path, tiny_model, space, trials=2)
    spec = with_policy(build(study_file=f, jobs=2), abandon_factor=1e6)
    assert spec.lanes == 2
    search = Search(spec, Store(f"sqlite:///{tmp_path / 'lanes.db'}"), chaos)
    study = search.open_study()
    for behaviour in ("busy-compile", "slow-calls"):  # one lane each
        study.enqueue_trial({"chaos.behaviour": behaviour})
    result = search.run(strict=False)
    by = {r.recipe["chaos"]["behaviour"]: r for r in result.records}
    assert set(by) == {"busy-compile", "slow-calls"} and all(r.status.value == "ok" for r in by.values()), by
    compiled, slow = by["busy-compile"].figures, by["slow-calls"].figures
    assert compiled.paused_s > 1.2, compiled  # stopped for the other's warm call and measured calls (0.4 s each)
    assert 4.0 <= compiled.first_call_s < 4.0 + 1.0, compiled  # the stop is not charged to its first call
    assert compiled.wall_s > compiled.first_call_s + 1.2
    assert slow.measure_s >= slow.runs * 0.4
    gate = CheckingGate.instances[-1]
    assert any(gate.checked), "the lanes never overlapped: nothing was checked"
    assert all(s == "T" for states in gate.checked for s in states), gate.checked
    windows = sorted(gate.windows)
    assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:]))  # timed windows never overlap
    assert result.lanes == 2


def test_jobs_auto_and_bad_values():
    """auto: one lane, on any target (beside another trial's compile a CPU trial's steps are many times
    slower; on a GPU two trials would share its memory); a number runs that many; anything else is
    refused."""
    from autotune.spec import parse_jobs

    assert parse_jobs("auto") == 1 and parse_jobs(None) == 1
    assert parse_jobs(3) == 3 and parse_jobs("1") == 1
    for bad in ("0", "two", -1, "1.5"):
        with pytest.raises(UsageError, match="--jobs"):
            parse_jobs(bad)
