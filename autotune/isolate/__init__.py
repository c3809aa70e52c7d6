"""Run a trial in a child process of its own with a wall-clock limit, and classify how it ended.

Nothing that happens in the child takes the parent down, and the child does not outlive its parent.
Four parts, calls in one direction (this module → each of them; the watch → the gate → process):

- :mod:`.process`: where a trial process forks from, what it inherits, how it dies;
- :mod:`.memcap`: the memory cgroup whose OOM killer enforces a memory cap;
- :mod:`.gate`: trials side by side (a search's lanes) whose timed windows run alone;
- :mod:`.watch`: the parent's wait on one trial — its messages, its limits, how it ended.

``invalid`` (pruned by a rule before launch) is decided by the caller and never reaches here."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

from ..states import Status
from ..trial import Outcome, TrialRequest
from . import process
from .gate import Gate, Member
from .memcap import MemoryCap
from .watch import TIMED, Watch

__all__ = ["run_isolated", "Gate", "Member", "MemoryCap", "Watch", "TIMED"]

OOM_NAMES = ("OutOfMemoryError", "MemoryError")
OOM_TEXTS = ("can't allocate memory", "not enough memory", "out of memory")


def run_isolated(request: TrialRequest, timeout: float, memory_cap_bytes: int = 0,
                 first_call_cap_s: float | None = None, gate: Gate | None = None) -> Outcome:
    """Run :func:`autotune.trial.run_trial` in a child; always returns an :class:`Outcome` whose
    figures carry the trial's wall time (and the phase it ended in, when it did not finish).
    ``memory_cap_bytes``: the kernel kills the child beyond it (a memory cgroup).
    ``first_call_cap_s``: a first call (compilation) running longer is stopped: the trial is pruned.
    ``gate``: shared with the other trials running at once; the timed window runs alone."""
    ctx = process.context()
    parent_conn, child_conn = ctx.Pipe()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp, MemoryCap(memory_cap_bytes) as cap:
        log = Path(tmp) / "child.log"
        proc = ctx.Process(target=trial_main, args=(child_conn, request, dict(os.environ), os.getpid(), str(log),
                                                    cap.path, gate is not None, gate is not None and gate.lanes > 1),
                           daemon=True)
        watch = Watch(proc, parent_conn, log, cap, first_call_cap_s, gate,
                      server_log_offset=process.log_size(process.server_log()))
        with process.main_not_reimported():
            proc.start()
        watch.started()
        child_conn.close()
        try:
            with gate.running(watch.member) if gate is not None else contextlib.nullcontext():
                outcome = watch.wait(timeout)
        finally:
            if proc.is_alive():
                process.signal_group(proc.pid, signal.SIGKILL)
            proc.join(5)
            process.signal_group(proc.pid, signal.SIGKILL, alone=False)  # compile workers it left behind
            parent_conn.close()
    outcome.figures.wall_s = time.monotonic() - start
    watch.correct(outcome.figures)
    return outcome


def trial_main(conn, request: TrialRequest, environ: dict, parent_pid: int, log_path: str, cgroup: str | None,
               gated: bool = False, shared_cpu: bool = False) -> None:
    """The trial process: announce each phase (with the system-wide monotonic time, the parent's
    too), wait for the parent's go before a timed window when gated, then send the result — or the
    failure, which the parent classifies."""
    process.become_trial(parent_pid, environ, log_path, cgroup)
    try:
        from ..trial import run_trial

        process.check_cuda_fork(request.device)

        def on_phase(phase: str) -> None:
            conn.send(("phase", (phase, time.monotonic())))
            if gated and phase == TIMED[0]:
                conn.recv()  # the go: every other trial of this host's search is stopped

        # beside another lane's compile (gcc, inductor's workers) two trials' threads share the cores, and
        # one decode step's thread barriers each wait out a time slice: 35 ms steps took 4.7 s (Xeon)
        conn.send(("done", run_trial(request, on_phase, shared_cpu=shared_cpu)))
    except BaseException as exc:  # report everything; the parent classifies
        oom = type(exc).__name__ in OOM_NAMES or any(t in str(exc).lower() for t in OOM_TEXTS)
        status = Status.OOM if oom else Status.ERROR
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        conn.send(("failed", (status, f"{type(exc).__name__}: {first}"[:500])))
    finally:
        conn.close()
