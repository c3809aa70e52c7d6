"""A trial's process and its lifetime: where it forks from, what it inherits, how it dies.

Trial processes fork from a server that has imported torch and transformers and nothing else (no
model, no thread pool, no CUDA context): each trial is a fresh process that starts in milliseconds.
Nothing in here knows what a trial measures (:mod:`autotune.trial`) or how long it may take
(:mod:`autotune.isolate.watch`)."""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import types
from pathlib import Path

#: imported once by the fork server, so a trial's process starts in milliseconds instead of paying
#: torch's and transformers' import again (seconds, every trial). None of these touches CUDA.
PRELOAD = ["torch", "transformers", "transformers.generation", "autotune.trial"]
#: preloaded too where no CUDA device is visible: importing it imports torchao when installed, whose
#: modules ask ``torch.cuda.get_device_capability()`` at import (``torchao.utils.is_sm_at_least_100``
#: from ``torchao/prototype/mx_formats/kernels.py``, torchao 0.18). That initialises CUDA in the
#: server, and every trial forked from it fails its first CUDA call ("Cannot re-initialize CUDA in
#: forked subprocess"): seen on the first H200 run. A trial imports it itself there (seconds).
PRELOAD_WITHOUT_CUDA = ["transformers.modeling_utils"]

#: the fork server's environment: ``torch.cuda.is_available()``, asked on import by torchao and
#: flash-attn, answers through NVML without initialising CUDA (torch's docs: it "will NOT poison fork")
SERVER_ENV = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def preload() -> list[str]:
    """What the fork server imports: :data:`PRELOAD`, and :data:`PRELOAD_WITHOUT_CUDA` unless a CUDA
    device is visible (asked through NVML: this process initialises nothing)."""
    return PRELOAD + ([] if _cuda_visible() else PRELOAD_WITHOUT_CUDA)


def _cuda_visible() -> bool:
    import torch

    with _environ(SERVER_ENV):
        return torch.cuda.is_available()


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """``values`` in this process's environment while the block runs; what was there before, after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_START_LOCK = threading.Lock()
_server_log: Path | None = None


def context():
    """The fork server's multiprocessing context, started once per process. The server's own
    output (libraries' import chatter), and a trial's before it opens its own log (a failure to
    start), go to :func:`server_log`."""
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(preload())
    with _START_LOCK:
        _ensure_server(forkserver)
    return ctx


def _ensure_server(forkserver) -> None:
    """Start the server unless it runs (``ensure_running`` is a no-op then), in :data:`SERVER_ENV`."""
    global _server_log
    if _server_log is None:
        fd, name = tempfile.mkstemp(prefix="autotune-forkserver-", suffix=".log")
        os.close(fd)
        _server_log = Path(name)
        atexit.register(_server_log.unlink, missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(_server_log, os.O_WRONLY | os.O_APPEND)
    try:
        with _environ(SERVER_ENV):  # the asking process keeps its own environment
            os.dup2(log, 1)
            os.dup2(log, 2)
            forkserver.ensure_running()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def server_log() -> Path | None:
    """Where the fork server and a trial that dies before it opens its own log write."""
    return _server_log


def server_pid() -> int | None:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


@contextlib.contextmanager
def main_not_reimported():
    """Around starting a trial process: multiprocessing would have the child run the caller's main
    script again (as ``__mp_main__``) — a plain ``python script.py`` that calls
    ``autotune.search()`` at module level would search again in every trial, and ``python -`` has no
    file to run at all. A trial needs nothing from the caller's ``__main__`` (its request is plain
    data; plugins import by module name), so the child is told of none."""
    with _START_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def die_with(parent_pid: int) -> None:
    """Linux: this trial process dies when the process that asked for it dies (kill -9 included),
    so no orphan keeps burning the CPU after a killed search. Its parent is the fork server, so a
    parent-death signal alone is not enough: a thread waits on a pidfd of the asking process."""
    import ctypes
    import select

    try:
        PR_SET_PDEATHSIG = 1  # the fork server's death too
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    try:
        fd = os.pidfd_open(parent_pid)
    except ProcessLookupError:  # already gone
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here: the parent-death signal is all we have
        return

    def watch():
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="autotune-parent-watch", daemon=True).start()


def become_trial(parent_pid: int, environ: dict, log_path: str, cgroup: str | None) -> None:
    """The first steps of a trial process: a process group of its own (stopping or killing the trial
    reaches its compile workers too), death with its asker, the memory cap joined before anything is
    allocated, the asking process's environment (not the server's at its start), its output to its
    own log, and Ctrl-C left to the parent (which finishes this trial, then stops)."""
    os.setpgid(0, 0)
    die_with(parent_pid)
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    os.environ.clear()
    os.environ.update(environ)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def idle_priority() -> str:
    """Run this process (and every process it starts: inductor's compile workers, gcc) only when the
    CPU is otherwise idle: ``SCHED_IDLE``, else ``nice 19``. Returns which."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        os.nice(19)
        return "nice 19"


def check_cuda_fork(device: str) -> None:
    """A CUDA trial forked from a process that had initialised CUDA cannot use it: say so in one line
    instead of failing on the first CUDA call with torch's message."""
    if device != "cuda":
        return
    import torch

    if torch.cuda._is_in_bad_fork():
        raise RuntimeError("this trial process was forked after CUDA was initialised in its parent (the fork "
                           "server): CUDA cannot be used in it; the fork server must start with "
                           "PYTORCH_NVML_BASED_CUDA_CHECK=1")


def signal_group(pid: int, sig: int, alone: bool = True) -> None:
    """Signal the trial's process group (itself and its compile workers); with ``alone``, just the
    trial (still alive) when its group is not set up yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        if alone:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    except PermissionError:  # not ours
        pass


def tail(path: Path | None, lines: int = 3) -> str:
    """The last non-empty lines of a log, joined on one line."""
    if path is None:
        return ""
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


def log_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def since(path: Path | None, offset: int, lines: int = 3) -> str:
    """The last non-empty lines written to ``path`` after ``offset`` bytes."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-400:]

