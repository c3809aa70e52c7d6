"""Run a trial in a child process of its own with a wall-clock limit, and classify how it ended.

Classes (:class:`~autotune.figures.Status`): ``ok``; ``pruned`` (abandoned early as hopeless);
``oom`` (out-of-memory exception, or killed by the kernel's OOM killer); ``crash`` (the child died:
segfault, abort); ``timeout`` (killed at the wall-clock limit, with the phase it was in); ``error``
(an exception, with its message). ``invalid`` (pruned by a rule before launch) is decided by the
caller and never reaches here. Nothing that happens in the child takes the parent down, and the
child does not outlive its parent."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile
import time
from pathlib import Path

from .figures import Figures, Status
from .trial import Outcome, TrialRequest

OOM_NAMES = ("OutOfMemoryError", "MemoryError")
#: imported once by the fork server, so a trial's process starts in milliseconds instead of paying
#: torch's and transformers' import again (seconds, every trial)
PRELOAD = ["torch", "transformers", "transformers.generation", "transformers.modeling_utils", "autotune.trial"]


def _context():
    """Trial processes fork from a server that has imported torch and nothing else (no model, no
    thread pool started): each trial still runs in its own fresh process."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when its parent dies (kill -9 included): no orphan
    keeps burning the CPU after a killed search."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _child(conn, request: TrialRequest, environ: dict, log_path: str) -> None:
    _die_with_parent()
    if os.getppid() == 1:  # the parent died before we could ask to die with it
        os._exit(1)
    os.environ.clear()  # the environment of the asking process now, not the fork server's at its start
    os.environ.update(environ)
    # the child's own output (compile logs, library warnings) goes to a log, not the user's terminal
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it finishes this trial, then stops
    try:
        from .trial import run_trial

        conn.send(("done", run_trial(request, lambda phase: conn.send(("phase", phase)))))
    except BaseException as exc:  # report everything; the parent classifies
        status = Status.OOM if type(exc).__name__ in OOM_NAMES else Status.ERROR
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        conn.send(("failed", (status, f"{type(exc).__name__}: {first}"[:500])))
    finally:
        conn.close()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


def run_isolated(request: TrialRequest, timeout: float) -> Outcome:
    """Run :func:`autotune.trial.run_trial` in a child; always returns an :class:`Outcome` whose
    figures carry the trial's wall time (and the phase it ended in, when it did not finish)."""
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp:
        log = Path(tmp) / "child.log"
        proc = ctx.Process(target=_child, args=(child_conn, request, dict(os.environ), str(log)), daemon=True)
        proc.start()
        child_conn.close()
        try:
            outcome = _Watch(proc, parent_conn, log).wait(timeout)
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            parent_conn.close()
    outcome.figures.wall_s = time.monotonic() - start
    return outcome


class _Watch:
    """Reads the child's messages (phases, then a result) until it ends or the limit passes."""

    def __init__(self, proc, conn, log: Path):
        self.proc, self.conn, self.log, self.phase = proc, conn, log, "start"

    def wait(self, timeout: float) -> Outcome:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(0.2):
                try:
                    kind, payload = self.conn.recv()
                except EOFError:  # closed without a result: the child died
                    return self._died()
                if kind == "phase":
                    self.phase = payload
                    continue
                self.proc.join(30)  # let it exit on its own: a killed child leaks its semaphores
                if kind == "done":
                    return payload
                status, error = payload
                return Outcome(status, Figures(phase=self.phase), error)
            if not self.proc.is_alive() and not self.conn.poll(0):
                return self._died()
        self.proc.kill()
        return Outcome(Status.TIMEOUT, Figures(phase=self.phase),
                       f"no result within {timeout:.0f} s (in the {self.phase} phase); child killed")

    def _died(self) -> Outcome:
        self.proc.join(5)
        code = self.proc.exitcode
        figures = Figures(phase=self.phase)
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return Outcome(Status.OOM, figures, f"child killed by SIGKILL in the {self.phase} phase "
                                                    f"(likely the OOM killer). {_tail(self.log)}".strip())
            return Outcome(Status.CRASH, figures, f"child died of {sig} in the {self.phase} phase. {_tail(self.log)}".strip())
        return Outcome(Status.CRASH, figures,
                       f"child exited with code {code} without a result. {_tail(self.log)}".strip())
