"""The compiles a time-boxed search could not afford, finished after it, for the team.

A candidate the search deferred (its compile predicted past any cap it could give it) or stopped at
its compile cap taught that search nothing. With a team compile cache (:mod:`autotune.compile_share`)
its compile is not lost: after the search's trials and its summary, a detached process at the lowest
CPU priority (``SCHED_IDLE``: it runs only when nothing else wants the CPU; else ``nice 19``) compiles
them one by one, cheapest predicted first, within a time budget (by default the search's own
``--timeout``). Each runs in its own trial process the calls every trial of it starts with (the
first calls of every shape, the warm-up) and saves what they compiled to the team cache; the database
records it with the phase :data:`~autotune.figures.COMPILED_ONLY`: its first call's time joins the
compile-time history, and it stands for no measurement (never reused as one, never a recipe). The
next search of any host of the team finds the artifact: the candidate loads rather than compiles, is
never deferred on its compile, and gets figures.

The flow: :func:`pending` (what to compile) -> :func:`start` (a job file, and ``python -m
autotune.backfill JOB`` detached) -> :func:`compile_pending` (one trial process each)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

from .compile_cost import MARGIN
from .figures import is_deferred
from .recipe import recipe_key
from .states import Status

#: without a search timeout, the background's budget (seconds)
DEFAULT_BUDGET_S = 600.0


def default_budget(measurer) -> float:
    """The background's time for a search's compiles: its ``--timeout``, else :data:`DEFAULT_BUDGET_S`."""
    return measurer.spec.timeout or DEFAULT_BUDGET_S


@dataclass
class Pending:
    """A candidate whose compile the search did not finish: its recipe, its predicted first call
    (seconds; None: nothing known; ``bound``: the prediction rests on a compile stopped at a cap, so the
    compile takes at least that) and why it was not compiled."""

    recipe: dict
    predicted_s: float | None
    why: str
    bound: bool = False

    def limit(self, left: float) -> float:
        """How long its compile may run: :data:`LIMIT_FACTOR` times a prediction (at least
        :data:`MIN_LIMIT_S`), within the time ``left``; all of it for a bound or nothing known."""
        if self.predicted_s is None or self.bound:
            return left
        return min(left, max(MIN_LIMIT_S, LIMIT_FACTOR * self.predicted_s))


#: a compile predicted at p seconds runs at most this many times p in the background
LIMIT_FACTOR = 3.0
MIN_LIMIT_S = 60.0


def pending(measurer, records, budget_s: float) -> list[Pending]:
    """This search's deferred and cap-stopped candidates whose compiled artifact the team cache does not
    hold yet, and that no earlier background compile of this target failed on under the limit they would
    get now: those predicted from compiles that finished first, cheapest first (the most compiles within
    the budget), then those whose prediction is only a bound (their cost has no top: the README job's
    background spent its whole 600 s on a compiled ``generate`` predicted at ">= 60 s", and the two
    ahead-of-time candidates predicted at 71-72 s, which the next host then compiled itself, waited
    behind it). ``budget_s``: the background's time, the most any of them could get. None without a team
    cache."""
    if not measurer.compile_cache:
        return []
    out, seen = [], set()
    for r in records:
        f = r.figures
        if r.status != Status.PRUNED or not (is_deferred(f) or f.first_call_cap_s is not None):
            continue
        key = recipe_key(r.recipe)
        if key in seen:
            continue
        seen.add(key)
        guess = measurer.caps.cost.predict(r.recipe) if measurer.caps.cost else None
        why = "deferred" if is_deferred(f) else f"stopped at its {f.first_call_cap_s:.0f} s compile cap"
        out.append(Pending(r.recipe, guess.seconds if guess else f.predicted_first_call_s, why,
                           bound=bool(guess and guess.at_least)))
    return order([p for p in out if wanted(measurer, p, budget_s)])


def wanted(measurer, item: Pending, budget_s: float) -> bool:
    """Whether ``item``'s compile is still the team's to do: no host of the team has put its artifact in
    the team cache, and no compile of it for the team failed under the limit it would get now."""
    return (not measurer.shared_artifact(item.recipe)
            and measurer.failed_background_limits(item.recipe) < item.limit(budget_s))


def order(items: list[Pending]) -> list[Pending]:
    """Predicted from finished compiles first, cheapest first; then bounds and the unknown."""
    return sorted(items, key=lambda p: (p.bound or p.predicted_s is None, p.predicted_s or 0.0))


def compile_pending(measurer, items: list[Pending], budget_s: float,
                    say: Callable[[str], None] = lambda s: None) -> list:
    """Compile ``items`` in turn within ``budget_s`` seconds, each within :meth:`Pending.limit` (one
    predicted past the time left, with :data:`~autotune.compile_cost.MARGIN`, is skipped); returns the
    stored records."""
    from .recipe import describe

    deadline = time.monotonic() + budget_s
    done = []
    for item in items:
        left = deadline - time.monotonic()
        text = describe(item.recipe, measurer.optimizations)
        if item.predicted_s is not None and item.predicted_s * MARGIN > left:
            say(f"skipped {text}: predicted at {'>= ' if item.bound else ''}{item.predicted_s:.0f} s, "
                f"{max(0.0, left):.0f} s left")
            continue
        started = time.monotonic()
        record = measurer.compile_only(item.recipe, timeout=item.limit(left))
        f = record.figures
        outcome = (f"compiled in {f.first_call_s:.0f} s, artifact {f.compile_artifact[:12]}"
                   if f.compile_artifact else f"{record.status}: {record.error}")
        guess = "nothing known" if item.predicted_s is None else \
            f"predicted {'>= ' if item.bound else ''}{item.predicted_s:.0f} s"
        say(f"{text} ({item.why}, {guess}): {outcome} [{time.monotonic() - started:.0f} s]")
        done.append(record)
    return done


def start(measurer, records, budget_s: float | None = None) -> dict | None:
    """After a search (its ``measurer`` and trial ``records``): compile what it did not, detached from
    this process, at idle priority. Returns what was started (``pid``, ``log``, ``pending``,
    ``budget_s``), or None when there is nothing to compile (or no team cache)."""
    from .paths import cache_dir

    budget_s = budget_s if budget_s is not None else default_budget(measurer)
    items = pending(measurer, records, budget_s) if budget_s > 0 else []
    if not items:
        return None
    folder = cache_dir() / "background"
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    spec = measurer.spec
    doc = {"spec": spec.to_dict(), "device": spec.target.device, "study": measurer.study_name,
           "db": measurer.store.url, "compile_cache": measurer.compile_cache, "budget_s": budget_s,
           "pending": [asdict(i) for i in items]}
    fd = os.open(job, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it names the database and the cache
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    log = job.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "autotune.backfill", str(job)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return {"pid": proc.pid, "log": str(log), "pending": len(items), "budget_s": budget_s}


def main(path: str) -> int:
    from .compile_share import ENV
    from .isolate.process import idle_priority
    from .measurer import Measurer
    from .registry import get_optimizations
    from .spec import SearchSpec
    from .store import Store
    from .target import current_target

    priority = idle_priority()  # (each compile's trial process sets its own too: see autotune.trial)
    with open(path) as fh:
        doc = json.load(fh)
    os.unlink(path)  # read once: it names the database and the cache
    os.environ[ENV] = doc["compile_cache"]
    spec = SearchSpec.from_dict(doc["spec"], current_target(doc["device"]))
    measurer = Measurer(spec, Store(doc["db"]), get_optimizations(), doc["study"], set())
    items = [Pending(**p) for p in doc["pending"]]
    print(f"{len(items)} compiles of study {doc['study']} for {measurer.compile_share_display()}, "
          f"within {doc['budget_s']:.0f} s, at {priority}", flush=True)
    done = compile_pending(measurer, items, doc["budget_s"], lambda s: print(s, flush=True))
    saved = sum(1 for r in done if r.figures.compile_artifact)
    print(f"done: {saved} of {len(items)} compiled into the team cache", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
