"""Study definitions: a TOML file (see ``studies/``) merged with command-line options into a
:class:`~autotune.search.SearchSpec`. Unknown keys are errors, not silent defaults."""
from __future__ import annotations

import tomllib
from pathlib import Path

from .budget import parse_budget, parse_objectives
from .errors import UsageError
from .models import resolve_model
from .target import current_target
from .workload import Workload, default_prompts

TOP_KEYS = {"model", "budget", "objective", "pareto", "trials", "timeout", "trial_timeout", "sampler", "study",
            "device", "config_only", "workload", "space", "measure"}
MEASURE_KEYS = {"min_runs", "max_runs", "target_cv", "max_measure_s"}
DEFAULTS = {"trials": 12, "sampler": "tpe", "trial_timeout": 900.0, "objective": "tpot"}


def read_study_file(path: str) -> dict:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read study file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"study file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise UsageError(f"study file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    if set(data.get("measure", {})) - MEASURE_KEYS:
        raise UsageError(f"study file {path}: [measure] takes only {', '.join(sorted(MEASURE_KEYS))}")
    return data


def build_spec(study_file: str | None, **cli):
    from .search import SearchSpec

    data = read_study_file(study_file) if study_file else {}
    def pick(key, file_key=None):
        value = cli.get(key)
        if value not in (None, "", False):
            return value
        return data.get(file_key or key, DEFAULTS.get(key))

    model = pick("model")
    if not model:
        raise UsageError("give a MODEL (or a --study-file that names one)")
    wl = dict(data.get("workload", {}))
    for key in ("prompt_tokens", "new_tokens", "batch_size"):
        if cli.get(key) is not None and (key not in wl or cli[key] != Workload.__dataclass_fields__[key].default):
            wl[key] = cli[key]
    wl.setdefault("prompts", list(default_prompts()))
    workload = Workload.from_dict(wl)
    space = {k: (v if isinstance(v, list) else [v]) for k, v in data.get("space", {}).items()}
    return SearchSpec(
        source=resolve_model(model, config_only=bool(pick("config_only"))),
        workload=workload,
        target=current_target(pick("device")),
        budget=parse_budget(pick("budget")),
        objectives=parse_objectives(pick("objective"), bool(pick("pareto"))),
        trials=int(pick("trials")),
        timeout=pick("timeout"),
        trial_timeout=float(pick("trial_timeout")),
        study_name=pick("study_name", "study"),
        sampler=pick("sampler"),
        restrict=space,
        measure_opts=dict(data.get("measure", {})),
    )
