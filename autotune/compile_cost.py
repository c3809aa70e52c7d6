"""How long a candidate's first call (its compilation) will take, predicted before it is paid.

Compile time is a property of what is compiled — the recipe's options, the model's shape, the
hardware and the library versions — and the tuning database records every trial's ``first_call_s``
with all of them. :class:`CompileCost` predicts a proposal's from that history: the measurements of
the most similar recipes, this host class and versions and this model first, then other models of
this host (scaled by the size of their weights), then other hosts. A recipe pruned at a compile cap
is a lower bound (it took at least the cap), and a prediction built on one says so.

The search (:mod:`autotune.tuner`) uses it to spend its time: a candidate predicted past its compile
cap gets a cap that fits, when the search can afford it, or is deferred — recorded as pruned with the
prediction, never launched blind. :meth:`CompileCost.error` checks the predictor on the database's
own history, each measurement held back in turn."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

#: how much a differing option of each plugin moves a recipe away (``compile.target`` must match)
WEIGHTS = {"compile": 3.0, "quantization": 2.0, "dtype": 2.0, "cache": 1.0, "attention": 1.0,
           "decoding": 1.0, "runtime": 0.5}
#: beyond this many weighted differences, a row says nothing about a recipe
MAX_DISTANCE = 4.0
#: what a step further from home costs: another model on this host, another host or versions
TIER_COST = 1.5
#: how many of the nearest rows predict a recipe not measured itself, and how steeply nearness weighs
NEIGHBOURS = 3
WEIGHT_POWER = 4.0
#: the margin a cap that fits leaves above a prediction
MARGIN = 1.3
#: the most another host's (or versions') compiles are scaled to this host's: a measured factor past it is noise
HOST_FACTOR_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class Past:
    """One measured first call: what was compiled, where, and how long it took (``censored``: it
    was stopped at a cap, so it took at least ``seconds``)."""

    id: int
    model_id: int
    hardware_key: str
    versions_key: str
    recipe: dict
    seconds: float
    censored: bool = False
    weights_bytes: float | None = None  # the model's as the HF default loads it


@dataclass(frozen=True)
class Prediction:
    seconds: float
    n: int  # measurements it rests on
    basis: str  # e.g. "2 of this recipe here", "3 similar on this host, other models"
    at_least: bool = False  # some rest on a compile stopped at a cap

    def text(self) -> str:
        return f"{'>= ' if self.at_least else ''}{self.seconds:.0f} s ({self.basis})"


def compile_target(recipe: dict) -> str:
    """What a recipe compiles (the compile plugin's ``target``; ``off``: nothing)."""
    return str(recipe.get("compile", {}).get("target", "off"))


def flat(recipe: dict) -> dict[str, object]:
    return {f"{p}.{o}": v for p, opts in recipe.items() if isinstance(opts, dict) for o, v in opts.items()}


def distance(a: dict[str, object], b: dict[str, object]) -> float:
    """Weighted count of the options two flattened recipes differ in; infinite when they compile
    different things (``compile.target``, ``compile.scope``)."""
    if a.get("compile.target") != b.get("compile.target") or \
            a.get("compile.scope", "model") != b.get("compile.scope", "model"):
        return float("inf")  # (one layer compiled for all is not the whole model compiled)
    return sum(WEIGHTS.get(k.split(".")[0], 1.0) for k in a.keys() | b.keys()
               if k != "compile.scope" and a.get(k) != b.get(k))


class CompileCost:
    """A predictor over ``history`` for one model (``model_id``, its weights' bytes) on one host
    class and library versions."""

    def __init__(self, history: Iterable[Past], hardware_key: str, versions_key: str, model_id: int,
                 weights_bytes: float | None = None):
        self.history = [(p, flat(p.recipe)) for p in history]
        self.hardware_key, self.versions_key = hardware_key, versions_key
        self.model_id, self.weights_bytes = model_id, weights_bytes
        self._ratios: dict[int, float] | None = None  # see host_factor

    def add(self, p: Past) -> None:
        self.history.append((p, flat(p.recipe)))
        self._ratios = None

    def host_factor(self, exclude: int | None = None) -> float:
        """How many times as long this host (and versions) takes to compile as the other hosts and versions
        whose rows it borrows: the median, over this model's compiles measured here, of each one's ratio to
        what the other hosts' rows alone predict for it (``exclude``: a measurement held back); 1 with none.
        The shipped prior comes from a Xeon: on an AMD EPYC (AVX-512, 2 cores) the int4 ahead-of-time seed
        compiled in 130 s against the 69 s it predicted, a compiled decode step in 28 s against 10, and the
        README job's median prediction error was 46%."""
        if self._ratios is None:
            self._ratios = {}
            for p, _ in self.history:
                if self._tier(p) != 0 or p.censored or p.seconds <= 0 or compile_target(p.recipe) == "off":
                    continue
                guess = self._predict(p.recipe, p.id, only_tier=2)
                if guess is not None and not guess.at_least:
                    self._ratios[p.id] = math.log(p.seconds / guess.seconds)
        logs = [v for k, v in self._ratios.items() if k != exclude]
        if not logs:
            return 1.0
        low, high = HOST_FACTOR_RANGE
        return min(high, max(low, math.exp(statistics.median(logs))))

    def _tier(self, p: Past) -> int:
        here = p.hardware_key == self.hardware_key and p.versions_key == self.versions_key
        return (0 if p.model_id == self.model_id else 1) if here else 2

    def _scaled(self, p: Past) -> float | None:
        if p.model_id == self.model_id:
            return p.seconds
        if not (self.weights_bytes and p.weights_bytes):
            return None  # another model of unknown size says nothing
        return p.seconds * self.weights_bytes / p.weights_bytes

    def predict(self, recipe: dict, exclude: int | None = None) -> Prediction | None:
        """The first call's predicted seconds (``exclude``: a measurement id held back); None when nothing
        in the history compiles the same thing. From the nearest tier's rows: this recipe's own, their
        median, when that tier measured it; else its :data:`NEIGHBOURS` nearest, their weighted geometric
        mean (weights ``(1 + distance) ** -WEIGHT_POWER``: the nearest dominates, the next ones damp one
        row's noise — over six README-job databases the median error over all first calls was at most
        21%, against 27% from the nearest rows alone). Other hosts' rows are scaled by
        :meth:`host_factor`."""
        return self._predict(recipe, exclude, factor=self.host_factor(exclude))

    def _predict(self, recipe: dict, exclude: int | None, factor: float = 1.0,
                 only_tier: int | None = None) -> Prediction | None:
        """:meth:`predict`, other hosts' rows times ``factor``; ``only_tier``: from that tier's rows alone."""
        mine = flat(recipe)
        scored = []
        for p, theirs in self.history:
            if p.id == exclude or (only_tier is not None and self._tier(p) != only_tier):
                continue
            d = distance(mine, theirs)
            seconds = self._scaled(p)
            if d != float("inf") and seconds is not None and seconds > 0:
                if self._tier(p) == 2:
                    seconds *= factor
                scored.append((d + TIER_COST * self._tier(p), d, self._tier(p), seconds, p.censored))
        # similar rows first; with none, the nearest of the same compile target still beats a blind launch
        # (the README job launched an AOTInductor candidate differing from a measured one in threads,
        # attention and ladder under a 60 s cap; it compiled for 60 s and taught nothing)
        similar = [s for s in scored if s[1] <= MAX_DISTANCE]
        scored = sorted(similar or scored, key=lambda s: s[0])
        if not scored:
            return None
        tier = scored[0][2]
        where = ("here", "on this host, other models", "on other hosts or versions")[tier]
        if tier == 2 and round(factor, 1) != 1.0:
            where += f", x{factor:.1f} for this host"
        same = [s for s in scored if s[2] == tier and s[1] == 0]
        if same:  # its own compiles that finished; else the most its stopped ones took (a bound)
            finished = [s[3] for s in same if not s[4]]
            seconds = statistics.median(finished) if finished else max(s[3] for s in same)
            return Prediction(seconds, len(same), f"{len(same)} of this recipe {where}", at_least=not finished)
        near = [s for s in scored if s[2] == tier][:NEIGHBOURS]
        what = "similar" if similar else "of the same compile target"
        finished = [s for s in near if not s[4]]
        # a compile stopped at a cap among the nearest is a bound that only raises the estimate; a further
        # one says less than the finished compiles nearer (and would turn a good estimate into a deferral)
        bounds = [s[3] for s in near if s[4] and s[1] <= near[0][1]]
        seconds = None
        if finished:
            weights = [(1 + s[1]) ** -WEIGHT_POWER for s in finished]
            seconds = math.exp(sum(w * math.log(s[3]) for w, s in zip(weights, finished)) / sum(weights))
            # within the rows' range: exp(log(60)) is 59.99999999999999 (a bound of 60 s then fit a 60 s cap)
            seconds = min(max(seconds, min(s[3] for s in finished)), max(s[3] for s in finished))
        if bounds and (seconds is None or max(bounds) >= seconds):
            return Prediction(max(bounds), len(near), f"{len(near)} {what} {where}", at_least=True)
        return Prediction(seconds, len(finished), f"{len(finished)} {what} {where}")

    def error(self, compiled_only: bool = False) -> tuple[float | None, int]:
        """Median absolute relative error of :meth:`predict` on this model's uncensored history, each
        measurement held back in turn, and how many could be predicted; ``compiled_only``: of the first
        calls of recipes that compile (``compile.target`` not off: an eager first call is no compile)."""
        errors = []
        for p, _ in self.history:
            if p.censored or p.model_id != self.model_id or p.hardware_key != self.hardware_key or p.seconds <= 0:
                continue
            if compiled_only and compile_target(p.recipe) == "off":
                continue
            guess = self.predict(p.recipe, exclude=p.id)
            if guess is not None:
                errors.append(abs(guess.seconds - p.seconds) / p.seconds)
        return (statistics.median(errors) if errors else None), len(errors)


def shipped_prior(model_id: int = -1) -> list[Past]:
    """Other hosts' history shipped with autotune (``data/compile_prior.json``: the README job's first calls
    on a fresh 2-core Xeon), for a time-boxed CPU search whose database knows nothing yet: without it the
    README job launched the guide's compiled forward and a compiled ``generate`` blind, and stopped them at
    their caps (164 s and 60 s of its 600, nothing learnt). As another host's rows they count only where
    this database has nothing nearer, scaled by the size of the model's weights."""
    import json
    from importlib import resources

    doc = json.loads(resources.files("autotune").joinpath("data/compile_prior.json").read_text())
    return [Past(-(i + 1), model_id, f"shipped: {doc['host']}", "shipped", r["recipe"], float(r["seconds"]),
                 bool(r["censored"]), r.get("weights_bytes")) for i, r in enumerate(doc["rows"])]


#: the share of a time-boxed search's time a seed's first call may take, when more than the policy's cap
SEED_SHARE = 0.4
#: the least cap a first call gets near a time-boxed search's deadline (an uncompiled one's few seconds)
MIN_CAP_S = 10.0


class CompileCaps:
    """How long each candidate's first call may run before it is pruned, for one search: the policy's
    cap (a time-boxed search's tenth for all but seeds), raised to a cap that fits a prediction when
    the search can afford it, or a deferral. ``cost`` is set once the baseline tells the model's size;
    ``deadline`` (monotonic) by a time-boxed run."""

    def __init__(self, policy, timeout: float | None, seed_keys: set):
        self.policy, self.timeout, self.seed_keys = policy, timeout, seed_keys
        self.cost: CompileCost | None = None
        self.deadline: float | None = None
        self.fitted: set[str] = set()  # compile targets a seed within the budget has compiled (see seed_fits)

    def base_cap(self, key: str, recipe: dict | None = None) -> float:
        """The policy's cap, and within a time-boxed search at most a tenth of the search's time, so one
        pathological compile cannot eat the budget of ten candidates — except a seed's (``key`` among
        ``seed_keys``), the prior's best bets, which get the policy's cap or, in a time-boxed search,
        :data:`SEED_SHARE` of its time when that is more: the AOTInductor seed, the usual CPU winner,
        compiled in 110 s on a fast day and 174-206 s on a slow one (Xeon, 2 cores). Only until a seed
        compiled the same way (``recipe``'s compile target) fits the budget: see :meth:`seed_fits`."""
        if not self.timeout:
            return self.policy.max_first_call_s
        if key in self.seed_keys and compile_target(recipe or {}) not in self.fitted:
            return max(self.policy.max_first_call_s, SEED_SHARE * self.timeout)
        return min(self.policy.max_first_call_s, max(30.0, self.timeout / 10))

    def seed_fits(self, recipe: dict, key: str) -> None:
        """A seed (``key`` among ``seed_keys``) measured within the budget: a seed's share of the search pays
        for one figure of its compile target early, the likely winner's; the seeds left of that target
        are then candidates like any other — under the ordinary cap, or a cap that fits their prediction,
        or deferred (and compiled after the search for the team). On a fresh host the int8 AOTInductor
        seed, after the int4 one fit the README job's budget, took 110 s of its 600 (Xeon, 2 cores): the
        time of four eager candidates' figures."""
        target = compile_target(recipe)
        if key in self.seed_keys and target != "off":
            self.fitted.add(target)

    def plan(self, recipe: dict, key: str, shared: bool = False) -> tuple[float, bool, Prediction | None]:
        """(cap, defer, prediction) for a candidate; ``shared``: the team compile cache holds what an
        earlier trial of it compiled, so its first call loads rather than compiles — nothing to predict
        from compiles, never deferred on one. In a time-boxed search no first call runs past the
        search's deadline (at least :data:`MIN_CAP_S`): the README job launched the guide's compiled
        forward with 69 s left under a seed's 240 s cap, and ended at 774 s of its 600."""
        import time

        predicted = self.cost.predict(recipe) if self.cost and not shared else None
        cap = self.base_cap(key, recipe)
        if self.deadline is not None:
            cap = min(cap, max(MIN_CAP_S, self.deadline - time.monotonic()))
        return (*self.cap_for(predicted, cap), predicted)

    def cap_for(self, predicted: Prediction | None, cap: float) -> tuple[float, bool]:
        """The cap for a candidate whose first call is ``predicted`` (None: launched under ``cap``,
        nothing known yet), and whether to defer it. One that fits under its cap with :data:`MARGIN` to
        spare runs under it. One whose prediction fits but not its margin gets the margin, within the
        time left (a compile predicted at 38.3 s ran under the 38.5 s left before a README job's
        deadline, past it, and taught nothing). One predicted past its cap gets a cap that fits when that
        is within the policy's cap and a quarter of the search's time left. Otherwise it is deferred,
        never launched blind; so is one whose prediction is a bound (a compile stopped at a cap) at or
        past its cap — below it, it runs under the cap."""
        import time

        if predicted is None or predicted.seconds * MARGIN <= cap:
            return cap, False
        if predicted.at_least:  # a bound from a compile stopped at a cap says no cap that fits: a second host
            # gave the compiled generate ">= 60 s" a 78 s cap and lost 80 s to it (README job)
            return cap, predicted.seconds >= cap
        fits = predicted.seconds * MARGIN
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if predicted.seconds <= cap:  # only the margin is past the cap (a seed's 40% of the search included)
            return (fits, False) if left is None or fits <= left else (cap, True)
        if fits <= self.policy.max_first_call_s and (left is None or fits <= left / 4):
            return fits, False
        return cap, True

    def learn(self, measurement_id: int, recipe: dict, first_call_s: float | None, stopped_at: float | None) -> None:
        """A first call this search measured (``stopped_at``: the cap it ran past) joins the history."""
        seconds = stopped_at if stopped_at is not None else first_call_s
        if self.cost is not None and seconds is not None:
            c = self.cost
            c.add(Past(measurement_id, c.model_id, c.hardware_key, c.versions_key, recipe, seconds,
                       stopped_at is not None, c.weights_bytes))
