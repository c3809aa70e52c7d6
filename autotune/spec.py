"""The study spec: everything that defines a search, built once from a study file (TOML, see
``studies/``) and the command line, and carried as plain data in a queued job.

Every default lives here and nowhere else. Command-line options default to ``None`` so that a value
given on the command line always wins, a value in the study file comes next, and the default last.
Unknown keys and wrong types are errors, not silent defaults."""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .budget import Budget, parse_budget, parse_objectives
from .errors import UsageError
from .sources import DRAFT_OPTION, ModelSource, resolve_model
from .workload import Workload

SAMPLERS = ("tpe", "grid", "nsga2", "random")
#: how long the HF-default baseline may take when no --trial-timeout is given (nothing to derive from yet)
BASELINE_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class MeasurePolicy:
    """How one recipe is measured inside its child process: repeat the timed call until the
    coefficient of variation of its latency is under ``target_cv`` (after ``min_runs``), or a cap
    is reached; score quality through the served path; abandon hopeless candidates early."""

    min_runs: int = 3
    max_runs: int = 20
    target_cv: float = 0.05
    max_measure_s: float = 20.0
    quality: bool = True
    #: a candidate whose warm end-to-end latency exceeds this many times the incumbent's is pruned
    #: (0: never — where timings are noise, as on a millisecond-scale test model)
    #: 5: the README job's layer-compiled int8 loops ran 3.0-3.8x the int4 leader's decode step and were
    #: abandoned without figures at 3; one screened round of them costs ~10 s and gives every figure
    abandon_factor: float = 5.0
    #: a candidate whose first measured round (one call per shape) takes more than this many times the
    #: incumbent's round is measured no further: its figures are that round's (``runs`` 1, ``screened``).
    #: Its remaining rounds would only confirm a loser; the time goes to the next candidate (0: never)
    screen_factor: float = 1.25
    #: from the second round on, a candidate whose median round is this many times the incumbent's is
    #: measured no further (``screened`` with ``runs`` 2+): it is slower than the incumbent beyond the
    #: rounds' noise, and more rounds would only say by how much more precisely (0: never)
    race_factor: float = 1.10
    #: the part of a derived trial limit set aside for compilation (seconds)
    compile_allowance_s: float = 180.0
    #: a first call (where compilation happens) still running after this many seconds is stopped and
    #: the trial pruned: a compile that costs minutes (max-autotune's GEMM benchmarking on a small CPU)
    #: would eat the search's budget; raise it to measure such recipes anyway
    max_first_call_s: float = 120.0
    #: the kernel kills a trial process whose memory passes this many bytes (a memory cgroup, where
    #: the host lets autotune make one); 0: no cap. The trial then ends as ``oom``.
    memory_cap_bytes: int = 0
    #: the envelope pass and the warm typical call are the trial's one round, where nothing compiled in
    #: them: no measured rounds follow. The HF default of a time-boxed search gets it: the search measures
    #: it again beside the best at its end, and that pair's ratio is the headline (its rounds were ~28 s
    #: of a 600 s search; Xeon)
    pass_round: bool = False
    #: the envelope pass and the warm typical call (where quality is scored, a typical call of its own:
    #: the warm call's tokens were forced) are the first of the measured rounds, where nothing compiled
    #: in them and the trial ran them alone: ``min_runs`` counts them, and one round fewer is
    #: measured after them. A time-boxed search's candidates and the pair at its end get it: the HF
    #: default's second round in that pair was ~25 s of the README job's 600 (EPYC)
    pass_first: bool = False

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("memory_cap_bytes", "abandon_factor", "screen_factor", "race_factor") and value == 0:  # 0: off
                continue
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise UsageError(f"measure.{f.name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UsageError(f"measure.{f.name} must be a positive number, got {value!r}")
            elif f.type == "int" and not isinstance(value, int):
                raise UsageError(f"measure.{f.name} must be a whole number, got {value!r}")
        if self.min_runs > self.max_runs:
            raise UsageError(f"measure.min_runs ({self.min_runs}) exceeds measure.max_runs ({self.max_runs})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "MeasurePolicy":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(f"[measure] takes only {', '.join(f.name for f in fields(cls))}; "
                             f"unknown: {', '.join(sorted(unknown))}")
        return cls(**d)

    @property
    def key(self) -> str:
        """What changes a measurement's figures: part of the reuse key (abandoning changes none)."""
        relevant = {k: v for k, v in self.to_dict().items()
                    if k not in ("abandon_factor", "screen_factor", "race_factor", "compile_allowance_s", "memory_cap_bytes",
                                 "max_first_call_s")}
        for option in ("pass_round", "pass_first"):  # the keys of measurements from before them stay as they were
            if not relevant.get(option):
                relevant.pop(option, None)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def trial_limit(self, baseline_wall_s: float, baseline_e2e_s: float) -> float:
        """A trial's wall-clock limit derived from the baseline: its whole trial time (start-up, load,
        warm-up, measurement, quality) three times over, plus the compile allowance and room for
        the repeat cap at three times the baseline's latency."""
        return self.compile_allowance_s + 3 * baseline_wall_s + self.max_measure_s + 3 * baseline_e2e_s


@dataclass
class SearchSpec:
    """One search: what to tune, where, against which budget, and how."""

    source: ModelSource
    workload: Workload
    target: Any  # autotune.target.Target
    budget: Budget
    objectives: list[tuple[str, str]]  # (figure key, direction)
    trials: int = 12
    timeout: float | None = None  # the whole search, seconds
    trial_timeout: float | None = None  # one trial; None derives it from the baseline
    study_name: str | None = None
    sampler: str = "tpe"
    seed: int | None = 0
    restrict: dict = field(default_factory=dict)  # {"plugin.option": [choices]}
    policy: MeasurePolicy = field(default_factory=MeasurePolicy)
    remeasure: bool = False  # measure even what the database already knows
    #: what an hour of this machine costs (USD): figures then show cost per million output tokens
    price_per_hour: float | None = None
    #: the draft model assisted decoding may use (``--draft``); its name is the recipe's decoding.draft
    draft: ModelSource | None = None
    #: trials run side by side (lanes): they load and compile at once, and each measures alone (see
    #: :class:`autotune.isolate.Gate`); how this process runs, not what is searched (a queued job's
    #: workers are the daemon's ``--workers``)
    lanes: int = 1
    #: after the trials, measure the HF default and the best recipe again, back to back, when the
    #: baseline is older than :data:`autotune.measurer.SIDE_BY_SIDE_AFTER_S`: the machine's speed
    #: drifts (10-45% between runs here), and a ratio is a claim only when both sides ran at one time
    side_by_side: bool = True

    def default_study_name(self) -> str:
        raw = json.dumps([self.budget.text, self.objectives, self.workload.key, self.restrict, self.sampler],
                         sort_keys=True, default=str)
        return f"{self.source.name}@{self.target.hardware_key[:8]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"

    def to_dict(self) -> dict:
        """Plain data for a queued job (the target is the worker's own, so it is not carried)."""
        return {"model": self.source.name, "config_only": self.source.config_only, "workload": self.workload.to_dict(),
                "budget": self.budget.text, "objectives": [list(o) for o in self.objectives], "trials": self.trials,
                "timeout": self.timeout, "trial_timeout": self.trial_timeout, "sampler": self.sampler,
                "seed": self.seed,
                "restrict": self.restrict, "policy": self.policy.to_dict(), "study_name": self.study_name,
                "price_per_hour": self.price_per_hour, "draft": self.draft.name if self.draft else None}

    @classmethod
    def from_dict(cls, d: dict, target) -> "SearchSpec":
        return cls(source=resolve_model(d["model"], config_only=d["config_only"]),
                   workload=Workload.from_dict(d["workload"]), target=target,
                   budget=parse_budget(d["budget"]), objectives=[tuple(o) for o in d["objectives"]],
                   trials=d["trials"], timeout=d.get("timeout"), trial_timeout=d["trial_timeout"],
                   sampler=d["sampler"], seed=d["seed"],
                   restrict=d["restrict"], policy=MeasurePolicy.from_dict(d.get("policy")),
                   study_name=d.get("study_name"), price_per_hour=d.get("price_per_hour"),
                   draft=resolve_model(d["draft"], tokenizer=False) if d.get("draft") else None,
                   side_by_side=False)  # a job's workers measure no pair at the end: its baseline is a whole one


# -- study files ---------------------------------------------------------------------------------
def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _positive_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


#: top-level study-file keys: (check, what the check wants)
STUDY_KEYS = {
    "model": (lambda v: isinstance(v, str) and v.strip() != "", "a model name or directory"),
    "budget": (lambda v: isinstance(v, str), "a budget string"),
    "objective": (lambda v: isinstance(v, str), "an objective name (or a comma list with pareto)"),
    "pareto": (lambda v: isinstance(v, bool), "true or false"),
    "trials": (_positive_int, "a positive whole number"),
    "timeout": (_positive_number, "a positive number of seconds"),
    "trial_timeout": (_positive_number, "a positive number of seconds"),
    "sampler": (lambda v: v in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
    "study": (lambda v: isinstance(v, str) and v.strip() != "", "a study name"),
    "device": (lambda v: v in ("cpu", "cuda"), "cpu or cuda"),
    "config_only": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "workload": (lambda v: isinstance(v, dict), "a [workload] table"),
    "space": (lambda v: isinstance(v, dict), "a [space] table"),
    "measure": (lambda v: isinstance(v, dict), "a [measure] table"),
    "price_per_hour": (_positive_number, "a positive number of US dollars per hour"),
    "draft": (lambda v: isinstance(v, str) and v.strip() != "", "a draft model name or directory"),
    "jobs": (lambda v: v == "auto" or _positive_int(v), "a positive whole number or \"auto\""),
    "side_by_side": (lambda v: isinstance(v, bool), "true or false"),
}



def read_study_file(path: str) -> dict:
    """A study file's data, every key and type checked; every problem is a one-line UsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read study file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"study file {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"study file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - set(STUDY_KEYS)
    if unknown:
        raise UsageError(f"study file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    for key, value in data.items():
        check, wanted = STUDY_KEYS[key]
        if not check(value):
            raise UsageError(f"study file {path}: {key} must be {wanted}, got {value!r}")
    for key, value in data.get("space", {}).items():
        if not isinstance(value, (list, str, int, float, bool)):
            raise UsageError(f"study file {path}: space.{key} must be a list of choices, got {value!r}")
    return data


def build(study_file: str | None = None, **cli) -> SearchSpec:
    """The spec from a study file (optional) and command-line values (``None`` = not given)."""
    from .target import current_target

    data = read_study_file(study_file) if study_file else {}

    def pick(key: str, file_key: str | None = None, default: Any = None):
        value = cli.get(key)
        return value if value is not None else data.get(file_key or key, default)

    model = pick("model")
    if not model:
        raise UsageError("give a MODEL (or a --study-file that names one)")
    workload = dict(data.get("workload", {}))
    workload.update({k: v for k, v in (cli.get("workload") or {}).items() if v is not None})
    space = {k: (v if isinstance(v, list) else [v])
             for k, v in {**data.get("space", {}), **(cli.get("space") or {})}.items()}
    draft = pick("draft")
    if draft is not None:
        if DRAFT_OPTION in space:
            raise UsageError(f"give the draft model once: --draft (or draft in the study file), not {DRAFT_OPTION}")
        draft = resolve_model(draft, config_only=bool(pick("config_only", default=False)), tokenizer=False)
        space[DRAFT_OPTION] = [draft.name]
    pareto = bool(pick("pareto", default=False))
    # tokens/s over the traffic mix: what will be served. TPOT alone crowned an ahead-of-time loop whose
    # long prompts ran 9x slower (0.72x the HF default's tokens/s, README job on the Xeon)
    objective = pick("objective", default="throughput")
    source = resolve_model(model, config_only=bool(pick("config_only", default=False)))
    target = current_target(pick("device"))
    price = pick("price_per_hour")
    if price is not None and not _positive_number(price):
        raise UsageError(f"--price-per-hour must be a positive number of US dollars, got {price!r}")
    if price is None and "cost" in [n.strip() for n in objective.split(",")]:
        raise UsageError("--objective cost needs a price: --price-per-hour USD (or price_per_hour in the study file)")
    workload = Workload.from_dict(workload).for_model(source.info(), repr(source.name))
    return SearchSpec(
        source=source,
        workload=workload,
        target=target,
        budget=parse_budget(pick("budget", default="")),
        objectives=parse_objectives(objective, pareto),
        trials=pick("trials", default=SearchSpec.trials),
        timeout=pick("timeout"),
        trial_timeout=pick("trial_timeout"),
        study_name=pick("study_name", "study"),
        sampler=pick("sampler", default=SearchSpec.sampler),
        seed=pick("seed", default=SearchSpec.seed),
        restrict=space,
        policy=MeasurePolicy.from_dict({**data.get("measure", {}), **(cli.get("measure") or {})}),
        remeasure=bool(cli.get("remeasure")),
        price_per_hour=price,
        draft=draft,
        lanes=parse_jobs(pick("jobs", default="auto")),
        side_by_side=bool(pick("side_by_side", default=True)),
    )


def parse_jobs(value) -> int:
    """``--jobs``: a positive number, or ``auto`` — one lane. A CPU trial's threads take every core,
    and beside another trial's compile its decode steps' thread barriers each wait out a time slice:
    on the 2-core Xeon a 35 ms step took 117 ms beside one busy thread, 312 ms beside three, and 4.7 s
    in a two-lane search, where every compiled candidate then ran past its compile cap (two lanes had
    measured 27 recipes against 17 for one on an EPYC when most trials compiled nothing). A GPU target
    runs one: two trials' weights and compile workspaces would share its memory, and a memory budget
    needs the device to itself. ``--jobs N`` still runs N side by side, their timed windows alone."""
    if value == "auto" or value is None:
        return 1
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if jobs < 1 or str(value).strip() != str(jobs):
        raise UsageError(f"--jobs must be a positive whole number or auto, got {value!r}")
    return jobs


def with_policy(spec: SearchSpec, **changes) -> SearchSpec:
    """A copy of ``spec`` with some measurement-policy fields changed (benchmarks, tests)."""
    return replace(spec, policy=replace(spec.policy, **changes))
