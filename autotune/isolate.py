"""Run a trial in a child process of its own with a wall-clock limit, and classify how it ended.

Classes (:class:`~autotune.figures.Status`): ``ok``; ``pruned`` (abandoned early as hopeless);
``oom`` (out-of-memory exception, or killed by the kernel's OOM killer); ``crash`` (the child died:
segfault, abort); ``timeout`` (killed at the wall-clock limit, with the phase it was in); ``error``
(an exception, with its message). ``invalid`` (pruned by a rule before launch) is decided by the
caller and never reaches here. Nothing that happens in the child takes the parent down, and the
child does not outlive its parent.

Several trials may run at once (a search's lanes, see :class:`Gate`): they share the CPU while they
load and compile, but a timed window (the warm call and the measured calls) runs alone — every other
trial's process group is stopped (SIGSTOP) until it ends, and the time a trial spent stopped or
waiting is charged neither to its limits nor to its figures."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .figures import Figures, Status
from .trial import Outcome, TrialRequest

OOM_NAMES = ("OutOfMemoryError", "MemoryError")
OOM_TEXTS = ("can't allocate memory", "not enough memory", "out of memory")
#: imported once by the fork server, so a trial's process starts in milliseconds instead of paying
#: torch's and transformers' import again (seconds, every trial)
PRELOAD = ["torch", "transformers", "transformers.generation", "transformers.modeling_utils", "autotune.trial"]


def _context():
    """Trial processes fork from a server that has imported torch and nothing else (no model, no
    thread pool started): each trial still runs in its own fresh process. The server's own output
    (libraries' import chatter) goes nowhere; each trial sends its output to its log."""
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        forkserver.ensure_running()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
    return ctx


def _die_with(parent_pid: int) -> None:
    """Linux: this trial process dies when the process that asked for it dies (kill -9 included),
    so no orphan keeps burning the CPU after a killed search. Its parent is the fork server, so a
    parent-death signal alone is not enough: a thread waits on a pidfd of the asking process."""
    import ctypes
    import select
    import threading

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


#: a trial's timed window: the warm call, then the measured calls (the first opens it; any other
#: phase, quality, closes it)
TIMED = ("warm-up", "measure")


def _child(conn, request: TrialRequest, environ: dict, parent_pid: int, log_path: str, cgroup: str | None,
           gated: bool = False) -> None:
    os.setpgid(0, 0)  # a group of its own: stopping or killing the trial reaches its compile workers too
    _die_with(parent_pid)
    if cgroup:  # join the memory cap before allocating anything
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    os.environ.clear()  # the environment of the asking process now, not the fork server's at its start
    os.environ.update(environ)
    # the child's own output (compile logs, library warnings) goes to a log, not the user's terminal
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it finishes this trial, then stops
    try:
        from .trial import run_trial

        def on_phase(phase: str) -> None:
            conn.send(("phase", (phase, time.monotonic())))  # the system-wide clock: the parent's too
            if gated and phase == TIMED[0]:
                conn.recv()  # the parent's go: every other trial of this host's search is stopped

        conn.send(("done", run_trial(request, on_phase)))
    except BaseException as exc:  # report everything; the parent classifies
        oom = type(exc).__name__ in OOM_NAMES or any(t in str(exc).lower() for t in OOM_TEXTS)
        status = Status.OOM if oom else Status.ERROR
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


def run_isolated(request: TrialRequest, timeout: float, memory_cap_bytes: int = 0,
                 first_call_cap_s: float | None = None, gate: "Gate | None" = None) -> Outcome:
    """Run :func:`autotune.trial.run_trial` in a child; always returns an :class:`Outcome` whose
    figures carry the trial's wall time (and the phase it ended in, when it did not finish).
    ``memory_cap_bytes``: the kernel kills the child beyond it (a memory cgroup).
    ``first_call_cap_s``: a first call (compilation) running longer is stopped: the trial is pruned.
    ``gate``: shared with the other trials running at once; the timed window runs alone."""
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp, MemoryCap(memory_cap_bytes) as cap:
        log = Path(tmp) / "child.log"
        proc = ctx.Process(target=_child, args=(child_conn, request, dict(os.environ), os.getpid(), str(log),
                                                cap.path, gate is not None), daemon=True)
        watch = _Watch(proc, parent_conn, log, cap, first_call_cap_s, gate)
        proc.start()
        child_conn.close()
        try:
            with gate.running(watch) if gate is not None else contextlib.nullcontext():
                outcome = watch.wait(timeout)
        finally:
            if proc.is_alive():
                _signal_group(proc.pid, signal.SIGKILL)
            proc.join(5)
            _signal_group(proc.pid, signal.SIGKILL, alone=False)  # compile workers it left behind
            parent_conn.close()
    outcome.figures.wall_s = time.monotonic() - start
    watch.correct(outcome.figures)
    return outcome


def _signal_group(pid: int, sig: int, alone: bool = True) -> None:
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


class Gate:
    """Lets the trials one search runs at once (its lanes) share this host honestly: while they load
    and compile they run side by side, but a trial's timed window (its warm call and measured calls,
    :data:`TIMED`) runs alone — the trial that holds the gate stops (SIGSTOP) every other trial's
    process group and resumes them (SIGCONT) when its window ends. Each trial's stopped and waiting
    time is kept off its limits (trial limit, compile cap) and off its figures (load, first call,
    compile, quality). ``windows``: every held window, (start, end) on the monotonic clock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._members: set[_Watch] = set()
        self.holder: _Watch | None = None
        self._since = 0.0
        self.windows: list[tuple[float, float]] = []
        self.aborted = False  # set by the search on a second Ctrl-C: every trial stops now
        self._busy = 0  # the search's own threads at work (asking, storing, forking a trial)
        self._local = threading.local()

    @contextlib.contextmanager
    def parent_work(self):
        """The search's own work (asking Optuna, storing, starting a trial process) costs CPU too:
        it waits for an open window to close, and no window opens while it runs."""
        self._get_busy()
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self._cond:
                self._busy -= 1

    def _get_busy(self) -> None:
        with self._cond:
            while self.holder is not None:
                self._cond.wait()
            self._busy += 1

    @contextlib.contextmanager
    def running(self, watch: "_Watch"):
        """Around the wait on a trial: it is a member (stopped by others' windows, opening its own),
        and this thread's parent work pauses meanwhile."""
        busy = getattr(self._local, "depth", 0) > 0
        self.join(watch)
        if busy:
            with self._cond:
                self._busy -= 1
        try:
            yield
        finally:
            self.leave(watch)  # before this thread waits for the gate: its trial may hold it
            if busy:
                self._get_busy()

    def join(self, watch: "_Watch") -> None:
        with self._lock:
            self._members.add(watch)
            if self.holder is not None:
                watch.stop()

    def leave(self, watch: "_Watch") -> None:
        with self._lock:
            self._members.discard(watch)
            if self.holder is watch:
                self._release()
            if watch.stopped:
                watch.resume()

    def try_acquire(self, watch: "_Watch") -> bool:
        with self._lock:
            if self.holder is not None and self.holder is not watch:
                return False
            if self.holder is None and self._busy:
                return False
            if self.holder is None:
                self.holder, self._since = watch, time.monotonic()
                for other in self._members - {watch}:
                    other.stop()
            return True

    def release(self, watch: "_Watch") -> None:
        with self._lock:
            if self.holder is watch:
                self._release()

    def _release(self) -> None:
        self.windows.append((self._since, time.monotonic()))
        for other in self._members - {self.holder}:
            if other.stopped:
                other.resume()
        self.holder = None
        self._cond.notify_all()

    def abort(self) -> None:
        """Stop every trial now (they end as interrupted, nothing recorded)."""
        self.aborted = True


class MemoryCap:
    """A memory cgroup (v1 memory controller or v2 ``memory.max``) that a trial process joins, so
    the kernel's OOM killer — not Python — stops it at the cap, as it would in production."""

    _count = 0

    def __init__(self, limit_bytes: int):
        self.limit, self.path, self.v1 = limit_bytes, None, False

    def __enter__(self) -> "MemoryCap":
        if not self.limit:
            return self
        from .errors import UsageError

        MemoryCap._count += 1
        name = f"autotune-trial-{os.getpid()}-{MemoryCap._count}"
        for root, v1 in (("/sys/fs/cgroup/memory", True), ("/sys/fs/cgroup", False)):
            limit_file = "memory.limit_in_bytes" if v1 else "memory.max"
            if not v1 and "memory" not in _read(os.path.join(root, "cgroup.subtree_control")):
                continue
            try:
                os.mkdir(os.path.join(root, name))
                with open(os.path.join(root, name, limit_file), "w") as f:
                    f.write(str(int(self.limit)))
            except OSError:
                _remove(os.path.join(root, name))
                continue
            self.path, self.v1 = os.path.join(root, name), v1
            return self
        raise UsageError("measure.memory_cap_bytes needs a memory cgroup autotune can create (root, or a "
                         "delegated cgroup v2 with the memory controller)")

    def killed(self) -> bool:
        """Whether the kernel's OOM killer acted in this cgroup."""
        if self.path is None:
            return False
        text = _read(os.path.join(self.path, "memory.oom_control" if self.v1 else "memory.events"))
        return any(line.startswith("oom_kill ") and line.split()[1] != "0" for line in text.splitlines())

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            _remove(self.path)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _remove(path: str) -> None:
    for _ in range(50):  # the killed process may take a moment to leave the cgroup
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


class _Watch:
    """Reads the child's messages (phases, then a result) until it ends or the limit passes. Its
    :meth:`clock` runs only while the trial may run: time stopped by another trial's timed window, or
    waiting for the gate, is kept off the trial limit and the compile cap."""

    def __init__(self, proc, conn, log: Path, cap: MemoryCap, first_call_cap_s: float | None = None,
                 gate: Gate | None = None):
        self.proc, self.conn, self.log, self.cap, self.phase = proc, conn, log, cap, "start"
        self.first_call_cap_s, self.gate = first_call_cap_s, gate
        self.phases: list[tuple[str, float]] = []  # (phase, its start on the monotonic clock)
        self.stops: list[tuple[float, float]] = []  # intervals this trial was stopped by others
        self.stopped = False
        self._held_off = 0.0  # stopped or waiting, in all
        self._off_since: float | None = None
        self._waiting = False
        self.phase_since = self.clock()

    # -- time off: stopped by another trial's timed window, or waiting for the gate ---------------
    def clock(self) -> float:
        now = time.monotonic()
        return now - self._held_off - (now - self._off_since if self._off_since is not None else 0.0)

    def _off(self) -> None:
        if self._off_since is None:
            self._off_since = time.monotonic()

    def _on(self) -> None:
        if self._off_since is not None and not self.stopped and not self._waiting:
            self._held_off += time.monotonic() - self._off_since
            self._off_since = None

    def stop(self) -> None:
        """Called by the gate (under its lock) when another trial's timed window begins."""
        _signal_group(self.proc.pid, signal.SIGSTOP)
        self.stopped = True
        self.stops.append((time.monotonic(), float("inf")))
        self._off()

    def resume(self) -> None:
        _signal_group(self.proc.pid, signal.SIGCONT)
        self.stopped = False
        self.stops[-1] = (self.stops[-1][0], time.monotonic())
        self._on()

    def correct(self, figures: Figures) -> None:
        """Take the time this trial spent stopped out of the figures the child timed across it."""
        ends = [t for _, t in self.phases[1:]] + [float("inf")]
        stopped_in: dict[str, float] = {}
        for (phase, begin), end in zip(self.phases, ends):
            for a, b in self.stops:
                overlap = min(b, end, time.monotonic()) - max(a, begin)
                if overlap > 0:
                    stopped_in[phase] = stopped_in.get(phase, 0.0) + overlap
        for key, phase in (("load_s", "load"), ("first_call_s", "first call"), ("compile_s", "first call"),
                           ("quality_s", "quality")):
            value = getattr(figures, key)
            if value is not None and stopped_in.get(phase):
                setattr(figures, key, max(0.0, value - stopped_in[phase]))
        if self.gate is not None:
            figures.paused_s = time.monotonic() - self.clock()

    # -- the loop ---------------------------------------------------------------------------
    def wait(self, timeout: float) -> Outcome:
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if self.gate is not None and self.gate.aborted:
                raise KeyboardInterrupt
            if self._compile_too_long():
                return Outcome(Status.PRUNED, Figures(phase=self.phase, first_call_cap_s=self.first_call_cap_s),
                               f"the first call (compilation) ran past {self.first_call_cap_s:.0f} s: pruned so the "
                               "search can afford other candidates ([measure] max_first_call_s raises it)")
            if self._waiting and self.gate.try_acquire(self):
                self._waiting = False
                self._on()
                self.conn.send("go")
            if self.conn.poll(0.2):
                try:
                    kind, payload = self.conn.recv()
                except EOFError:  # closed without a result: the child died
                    return self._died()
                if kind == "phase":
                    self._enter(*payload)
                    continue
                self.proc.join(30)  # let it exit on its own: a killed child leaks its semaphores
                if kind == "done":
                    return payload
                status, error = payload
                return Outcome(status, Figures(phase=self.phase), error)
            if not self.proc.is_alive() and not self.conn.poll(0):
                return self._died()
        return Outcome(Status.TIMEOUT, Figures(phase=self.phase),
                       f"no result within {timeout:.0f} s (in the {self.phase} phase); child killed")

    def _enter(self, phase: str, at: float) -> None:
        self.phase, self.phase_since = phase, self.clock()
        self.phases.append((phase, at))
        if self.gate is None:
            return
        if phase == TIMED[0]:  # the child waits for the go
            self._waiting = True
            self._off()
        elif phase not in TIMED:
            self.gate.release(self)

    def _compile_too_long(self) -> bool:
        return (self.first_call_cap_s is not None and self.phase == "first call"
                and self.clock() - self.phase_since > self.first_call_cap_s)

    def _died(self) -> Outcome:
        self.proc.join(5)
        code = self.proc.exitcode
        figures = Figures(phase=self.phase)
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            if -code == signal.SIGKILL and self.cap.killed():
                return Outcome(Status.OOM, figures, f"killed by the kernel's OOM killer at the "
                                                    f"{self.cap.limit / 2**30:.2f} GiB memory cap in the "
                                                    f"{self.phase} phase")
            if -code == signal.SIGKILL:
                return Outcome(Status.OOM, figures, f"child killed by SIGKILL in the {self.phase} phase "
                                                    f"(likely the OOM killer). {_tail(self.log)}".strip())
            return Outcome(Status.CRASH, figures, f"child died of {sig} in the {self.phase} phase. {_tail(self.log)}".strip())
        return Outcome(Status.CRASH, figures,
                       f"child exited with code {code} without a result. {_tail(self.log)}".strip())
