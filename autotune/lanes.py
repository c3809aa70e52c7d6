"""Trials side by side (a search's lanes, ``--jobs``): each lane runs one trial at a time; a trial is
asked when a lane is free; every lane's trial processes share one
:class:`~autotune.isolate.Gate`, so each timed window runs alone. Ctrl-C once: finish the trials in
flight, then stop; twice: stop them now (nothing recorded)."""
from __future__ import annotations

import signal
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable


class StopFlag:
    """First Ctrl-C: finish the current trials, then stop. Second: stop now."""

    def __init__(self):
        self.stop = False

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


def run_lanes(lanes: int, gate, more: Callable[[int], bool], ask: Callable[[], object],
              step: Callable[[object], object], done: Callable[[object], None],
              deadline: Callable[[], float | None]) -> bool:
    """Run trials ``lanes`` at a time until ``more(in_flight)`` says no, the ``deadline()`` (monotonic,
    asked afresh: a search moves it) passes or Ctrl-C: ``ask()`` a trial (the search's own work, outside
    any timed window), run ``step(trial)`` in a lane, hand each result to ``done(result)``. Returns
    whether it was interrupted."""
    interrupted, running = False, set()

    def lane(trial):
        with gate.parent_work():  # the search's own work in a lane never runs during a timed window
            return step(trial)

    with StopFlag() as flag, ThreadPoolExecutor(lanes, thread_name_prefix="autotune-lane") as pool:
        try:
            while True:
                end = deadline()
                stopping = flag.stop or (end is not None and time.monotonic() > end)
                interrupted = interrupted or flag.stop
                while not stopping and len(running) < lanes and more(len(running)):
                    with gate.parent_work():
                        trial = ask()
                    running.add(pool.submit(lane, trial))
                if not running:
                    return interrupted
                finished, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    with gate.parent_work():
                        done(result)
        except BaseException:
            gate.abort()  # the lanes' trials end now, recorded as nothing
            raise
