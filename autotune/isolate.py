"""Run a trial in a spawned child process with a wall-clock limit, and classify how it ended.

Classes: ``ok``; ``oom`` (out-of-memory exception, or killed by the kernel's OOM killer);
``crash`` (the child died: segfault, abort); ``timeout`` (killed at the wall-clock limit);
``error`` (an exception, with its message). ``invalid`` (pruned by a rule before launch) is decided
by the caller and never reaches here. Nothing that happens in the child takes the parent down."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile
import time
from pathlib import Path

OOM_NAMES = ("OutOfMemoryError", "MemoryError")


def _child(conn, spec: dict, log_path: str) -> None:
    # the child's own output (compile logs, library warnings) goes to a log, not the user's terminal
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it finishes this trial, then stops
    try:
        from .trial import run_trial

        conn.send(("ok", run_trial(spec)))
    except BaseException as exc:  # report everything; the parent classifies
        status = "oom" if type(exc).__name__ in OOM_NAMES else "error"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        conn.send((status, f"{type(exc).__name__}: {first}"[:500]))
    finally:
        conn.close()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


def run_isolated(spec: dict, timeout: float) -> dict:
    """Run :func:`autotune.trial.run_trial` on ``spec`` in a child; always returns a dict with
    ``status`` (and ``error`` unless ok)."""
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp:
        log = Path(tmp) / "child.log"
        proc = ctx.Process(target=_child, args=(child_conn, spec, str(log)), daemon=True)
        proc.start()
        child_conn.close()
        try:
            return _wait(proc, parent_conn, timeout, log)
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            parent_conn.close()


def _wait(proc, conn, timeout: float, log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.2):
            try:
                status, payload = conn.recv()
            except EOFError:  # closed without a message: the child died
                break
            proc.join(30)  # let it exit on its own: a killed child leaks its semaphores
            if status == "ok":
                return payload
            return {"status": status, "error": payload}
        if not proc.is_alive() and not conn.poll(0):
            break
    else:
        proc.kill()
        return {"status": "timeout", "error": f"no result within {timeout:.0f} s; child killed"}
    proc.join(5)
    code = proc.exitcode
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return {"status": "oom", "error": f"child killed by SIGKILL (likely the OOM killer). {_tail(log)}"}
        return {"status": "crash", "error": f"child died of {sig}. {_tail(log)}".strip()}
    return {"status": "crash", "error": f"child exited with code {code} without a result. {_tail(log)}".strip()}
