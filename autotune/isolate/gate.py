"""Trials side by side on one host, measured honestly: the :class:`Gate` and its :class:`Member` s.

While the trials of a search's lanes load and compile they share the CPU, but a trial's timed
window (its warm call and measured calls) runs alone: the trial that holds the gate stops (SIGSTOP)
every other member's process group and resumes them (SIGCONT) when its window ends. A member's
:meth:`Member.clock` runs only while it may run, so stopped or waiting time is charged neither to its
limits nor to its figures. The gate knows members, never what watches them."""
from __future__ import annotations

import contextlib
import signal
import threading
import time

from .process import signal_group


class Member:
    """One trial's process group as the gate sees it: stopped and resumed by other trials' windows,
    waiting for its own; ``stops`` holds every interval it stood stopped (monotonic clock)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.stops: list[tuple[float, float]] = []
        self.stopped = False
        self.waiting = False
        self._held_off = 0.0  # stopped or waiting, in all
        self._off_since: float | None = None

    def clock(self) -> float:
        """The monotonic clock less every moment this trial was stopped or waiting."""
        now = time.monotonic()
        return now - self._held_off - (now - self._off_since if self._off_since is not None else 0.0)

    def held_off(self) -> float:
        return time.monotonic() - self.clock()

    def stop(self) -> None:
        """Another trial's timed window begins (called under the gate's lock)."""
        signal_group(self.pid, signal.SIGSTOP)
        self.stopped = True
        self.stops.append((time.monotonic(), float("inf")))
        self._off()

    def resume(self) -> None:
        signal_group(self.pid, signal.SIGCONT)
        self.stopped = False
        self.stops[-1] = (self.stops[-1][0], time.monotonic())
        self._on()

    def wait_for_window(self) -> None:
        self.waiting = True
        self._off()

    def window_granted(self) -> None:
        self.waiting = False
        self._on()

    def _off(self) -> None:
        if self._off_since is None:
            self._off_since = time.monotonic()

    def _on(self) -> None:
        if self._off_since is not None and not self.stopped and not self.waiting:
            self._held_off += time.monotonic() - self._off_since
            self._off_since = None


class Gate:
    """Lets the trials one search runs at once (its lanes) share this host honestly (see the
    module). ``windows``: every held window, (start, end) on the monotonic clock."""

    def __init__(self, lanes: int = 1):
        #: trials that may run at once through this gate: above 1 they share the CPU outside their windows
        self.lanes = lanes
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._members: set[Member] = set()
        self.holder: Member | None = None
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
    def running(self, member: Member):
        """Around the wait on a trial: it is a member (stopped by others' windows, opening its own),
        and this thread's parent work pauses meanwhile."""
        busy = getattr(self._local, "depth", 0) > 0
        self.join(member)
        if busy:
            with self._cond:
                self._busy -= 1
        try:
            yield
        finally:
            self.leave(member)  # before this thread waits for the gate: its trial may hold it
            if busy:
                self._get_busy()

    def join(self, member: Member) -> None:
        with self._lock:
            self._members.add(member)
            if self.holder is not None:
                member.stop()

    def leave(self, member: Member) -> None:
        with self._lock:
            self._members.discard(member)
            if self.holder is member:
                self._release()
            if member.stopped:
                member.resume()

    def try_acquire(self, member: Member) -> bool:
        with self._lock:
            if self.holder is not None and self.holder is not member:
                return False
            if self.holder is None and self._busy:
                return False
            if self.holder is None:
                self.holder, self._since = member, time.monotonic()
                for other in self._members - {member}:
                    other.stop()
            return True

    def release(self, member: Member) -> None:
        with self._lock:
            if self.holder is member:
                self._release()

    def others(self, member: Member) -> set[Member]:
        with self._lock:
            return self._members - {member}

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
