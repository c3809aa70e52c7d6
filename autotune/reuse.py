"""When an earlier measurement stands for a new one: the reuse key and the reuse decision, as pure
functions of the rows the store returns (newest first) and what today's search is."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

from . import compile_share
from .figures import Figures
from .states import Status
from .spec import BASELINE_TIMEOUT_S


def reuse_key(spec, optimizations: Mapping) -> str:
    """What must match, beyond target and workload, for an earlier measurement to stand for a new
    one: the measurement policy, the model's content, autotune's and every plugin's version."""
    from . import __version__

    raw = {"policy": spec.policy.key, "model": spec.source.fingerprint, "autotune": __version__,
           **({"draft": spec.draft.fingerprint} if spec.draft else {}),
           "plugins": {name: f"{type(o).__module__}:{o.version}" for name, o in optimizations.items()}}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Today:
    """What today's search is, as far as reuse cares: its study, its trial limit, its lanes, and
    whether it reuses nothing (``remeasure``: only what this run itself ``measured_now``)."""

    study: str
    trial_limit_s: float | None = None
    lanes: int = 1
    remeasure: bool = False
    measured_now: frozenset = frozenset()


def reusable(earlier: list, today: Today, is_baseline: bool = False, first_call_cap_s: float | None = None,
             loads: bool = False):
    """Which earlier measurement, if any, stands for a new one (rows newest first, each with ``id``,
    ``status``, ``study``, ``figures``, ``trial_limit_s``):

    - with ``remeasure``, only one this run made;
    - a success always does — but one whose longer shapes' decode was sampled (``decode_sampled``: a
      loser judged against its own study's incumbent, that never decoded the envelope's last
      positions) stands within its study only: another study measures it again;
    - a failed baseline never does (it is measured again);
    - a timeout under a shorter limit than today's says nothing about today's;
    - one pruned because its first call (compilation) ran past a cap at least today's
      (``first_call_cap_s``) would run past today's — compile time is the recipe's, the target's and
      the versions', all in the key — so it does (or an earlier success of it); a larger cap, or
      fewer trials side by side (it compiled sharing the CPU with more) measures it again, and so does
      the team compile cache holding its compiled artifact now (``loads``: its first call loads it);
    - other failures stand within the study that measured them; another study retries once (a
      config that failed in two studies stays failed); one pruned as hopeless was judged against its
      study's incumbent: another study measures it again."""
    if not earlier:
        return None
    newest = earlier[0]
    if today.remeasure:
        return newest if newest.id in today.measured_now else None
    status = Status(newest.status)
    if status == Status.OK:
        sampled = (newest.figures or {}).get("decode_sampled")
        return None if sampled and newest.study != today.study else newest
    if is_baseline:
        return None
    if status == Status.TIMEOUT and (newest.trial_limit_s or 0) < (today.trial_limit_s or BASELINE_TIMEOUT_S):
        return None
    pruned = Figures.from_dict(newest.figures) if status == Status.PRUNED else None
    if pruned is not None and pruned.first_call_cap_s is not None:  # stopped at the compile cap
        if first_call_cap_s is None or pruned.first_call_cap_s < first_call_cap_s or (pruned.lanes or 1) > today.lanes \
                or (loads and not compile_share.loaded(pruned.compile_shared)):
            return None
        return next((r for r in earlier if Status(r.status) == Status.OK), newest)  # it did compile once
    if newest.study == today.study:
        return newest
    if status == Status.PRUNED:
        return None
    failed_in = {r.study for r in earlier if Status(r.status).failed}
    return newest if len(failed_in) >= 2 else None
