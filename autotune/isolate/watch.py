"""The parent's side of a trial: read the child's messages (phases, then a result) until it ends or
its limit passes, keep time it stood stopped off its limits and figures, and classify how it ended.

Classes (:class:`~autotune.states.Status`): ``ok``; ``pruned`` (abandoned early as hopeless, or its
compilation ran past the cap); ``oom`` (out-of-memory exception, or killed by the kernel's OOM
killer); ``crash`` (the child died: segfault, abort, an exit before it reported); ``timeout`` (killed
at the wall-clock limit, with the phase it was in); ``error`` (an exception, with its message)."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from ..figures import Figures
from ..states import Status
from ..trial import Outcome
from . import process
from .gate import Gate, Member
from .memcap import MemoryCap

#: a trial's timed window: the warm call, then the measured calls (the first opens it; any other
#: phase, quality, closes it)
TIMED = ("warm-up", "measure")


class Watch:
    """Waits on one trial process. Its clock (:class:`~autotune.isolate.gate.Member`) runs only while
    the trial may run: time stopped by another trial's timed window, or waiting for the gate, is kept
    off the trial limit and the compile cap."""

    def __init__(self, proc, conn, log: Path, cap: MemoryCap, first_call_cap_s: float | None = None,
                 gate: Gate | None = None, server_log_offset: int = 0):
        self.proc, self.conn, self.log, self.cap, self.phase = proc, conn, log, cap, "start"
        self.first_call_cap_s, self.gate = first_call_cap_s, gate
        self.member = Member(proc.pid) if proc.pid is not None else None
        self.server_log_offset = server_log_offset
        self.phases: list[tuple[str, float]] = []  # (phase, its start on the monotonic clock)
        self.phase_since = time.monotonic()

    def started(self) -> None:
        """The process runs: the gate may stop it from now on."""
        self.member = Member(self.proc.pid)
        self.phase_since = self.clock()

    def clock(self) -> float:
        return self.member.clock() if self.member is not None else time.monotonic()

    def correct(self, figures: Figures) -> None:
        """Take the time this trial spent stopped out of the figures the child timed across it."""
        stops = self.member.stops if self.member is not None else []
        ends = [t for _, t in self.phases[1:]] + [float("inf")]
        stopped_in: dict[str, float] = {}
        for (phase, begin), end in zip(self.phases, ends):
            for a, b in stops:
                overlap = min(b, end, time.monotonic()) - max(a, begin)
                if overlap > 0:
                    stopped_in[phase] = stopped_in.get(phase, 0.0) + overlap
        for key, phase in (("load_s", "load"), ("first_call_s", "first call"), ("compile_s", "first call"),
                           ("compile_s", "envelope pass"), ("envelope_pass_s", "envelope pass"),
                           ("quality_s", "quality")):
            value = getattr(figures, key)
            if value is not None and stopped_in.get(phase):
                setattr(figures, key, max(0.0, value - stopped_in[phase]))
        if self.gate is not None and self.member is not None:
            figures.paused_s = self.member.held_off()

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
            if self.member is not None and self.member.waiting and self.gate.try_acquire(self.member):
                self.member.window_granted()
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
        past = self.clock() - self.phase_since if self.phase == "first call" else None
        return Outcome(Status.TIMEOUT, Figures(phase=self.phase, first_call_past_s=past),
                       f"no result within {timeout:.0f} s (in the {self.phase} phase"
                       + (f", its first call {past:.0f} s long" if past is not None else "") + "); child killed")

    def _enter(self, phase: str, at: float) -> None:
        self.phase, self.phase_since = phase, self.clock()
        self.phases.append((phase, at))
        if self.gate is None:
            return
        if phase == TIMED[0]:  # the child waits for the go
            self.member.wait_for_window()
        elif phase not in TIMED:
            self.gate.release(self.member)

    def _compile_too_long(self) -> bool:
        return (self.first_call_cap_s is not None and self.phase == "first call"
                and self.clock() - self.phase_since > self.first_call_cap_s)

    def _why(self) -> str:
        """The child's last lines: from its own log, or — when it died before opening one (while it
        started) — from what it wrote to the fork server's."""
        return process.tail(self.log) or process.since(process.server_log(), self.server_log_offset)

    def _died(self) -> Outcome:
        self.proc.join(5)
        code = self.proc.exitcode
        figures = Figures(phase=self.phase)
        why = self._why()
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            if -code == signal.SIGKILL and self.cap.killed():
                return Outcome(Status.OOM, figures, f"killed by the kernel's OOM killer at the "
                                                    f"{self.cap.limit / 2**30:.2f} GiB memory cap in the "
                                                    f"{self.phase} phase")
            if -code == signal.SIGKILL:
                return Outcome(Status.OOM, figures, f"child killed by SIGKILL in the {self.phase} phase "
                                                    f"(likely the OOM killer). {why}".strip())
            return Outcome(Status.CRASH, figures, f"child died of {sig} in the {self.phase} phase. {why}".strip())
        where = "before it started" if self.phase == "start" else f"in the {self.phase} phase"
        return Outcome(Status.CRASH, figures,
                       f"child exited with code {code} {where}, without a result: {why or 'it wrote nothing'}")
