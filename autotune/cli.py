"""The command line. The only module that knows about click: library errors become one-line
messages here (exit 2 for usage errors, 1 for failures), never tracebacks."""
from __future__ import annotations

import functools
import json
import sys

import click

from .errors import AutotuneError, UsageError
from .states import Status
from .spec import BASELINE_TIMEOUT_S, SAMPLERS, SearchSpec
from .workload import Workload


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except AutotuneError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            # the database went away mid-run (Optuna's storage and SQLAlchemy raise their own types):
            # every write is one unit of work, so nothing is half-written and the same command resumes
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            click.echo(f"Error: the tuning database failed ({type(exc).__name__}: {first}); nothing is "
                       "half-written: run the same command again to resume", err=True)
            sys.exit(1)
    return wrapper


def _is_database_error(exc: BaseException) -> bool:
    names = {f"{c.__module__}.{c.__name__}" for c in type(exc).__mro__}
    return bool(names & {"sqlalchemy.exc.SQLAlchemyError", "optuna.exceptions.StorageInternalError"})


class _OneLine(click.ClickException):
    """A command-line mistake as one line (click's own usage errors print the usage too)."""

    exit_code = 2


class OneLineGroup(click.Group):
    """Every usage error, click's included (a bad option value, a directory where a file goes), is
    one line and exit code 2."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise self._one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise self._one_line(exc) from None

    @staticmethod
    def _one_line(exc: click.UsageError) -> click.ClickException:
        if type(exc).__name__ == "NoArgsIsHelpError":
            return exc
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        return _OneLine(where + " ".join(exc.format_message().split()))


@click.group(cls=OneLineGroup)
@click.version_option(package_name="autotune")
@click.option("-v", "--verbose", is_flag=True, help="let libraries' own warnings and notices through")
def cli(verbose=False):
    """Find the fastest way to run an LLM on this machine within a latency / memory / quality budget."""
    if not verbose:
        from .logs import quiet_libraries

        quiet_libraries()


#: workload options on the command line -> the workload field each sets
WORKLOAD_OPTIONS = {"workload_kind": "kind", "prompt_tokens": "prompt_tokens", "new_tokens": "new_tokens",
                    "batch_size": "batch_size", "max_context": "max_context", "max_batch": "max_batch",
                    "sampling": "sampling"}


def workload_options(fn):
    """The workload's options (the typical call and the serving envelope), handed to the command as
    one ``workload`` dict of the fields given (``None``: not given), and ``--device`` / ``--config-only``."""
    from .workload import DEFAULT_MAX_CONTEXT, KINDS

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        workload = {field: kwargs.pop(param) for param, field in WORKLOAD_OPTIONS.items()}
        return fn(*args, workload=workload, **kwargs)

    options = [
        click.option("--workload", "workload_kind", type=click.Choice(list(KINDS)), default=None,
                     help="the kind of traffic: chat (default), or input-grounded summarize / code-edit, "
                          "where the answer repeats the input"),
        click.option("--prompt-tokens", type=click.IntRange(min=1), default=None,
                     help="tokens in the typical call's prompt (default: the kind's, 32 for chat)"),
        click.option("--new-tokens", type=click.IntRange(min=1), default=None,
                     help=f"tokens generated per call, exactly (default {Workload.new_tokens})"),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help=f"rows in the typical call (default {Workload.batch_size})"),
        click.option("--max-context", type=click.IntRange(min=1), default=None,
                     help=f"the envelope: the most prompt + new tokens one served call may need (default "
                          f"{DEFAULT_MAX_CONTEXT}, capped by the model's positions)"),
        click.option("--max-batch", type=click.IntRange(min=1), default=None,
                     help="the envelope: the most rows one served call may have (default: --batch-size)"),
        click.option("--sampling", default=None, metavar="NAME=VALUE,...",
                     help="how served calls choose tokens, e.g. \"temperature=0.7,top_p=0.9\" (default greedy)"),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                     help="default: cuda when present, else cpu"),
        click.option("--config-only", is_flag=True,
                     help="random weights from config.json: speed is valid, quality is not"),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@cli.command()
@click.option("--model", default=None, help="also leave out choices that duplicate another for this model")
@click.option("--draft", default=None, metavar="MODEL", help="with --model: the draft assisted decoding would use")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@handle_errors
def plugins(model, draft, as_json):
    """Every optimization, its options and choices, and what is unavailable here and why."""
    from . import report_text
    from .optimization import unavailable_for
    from .registry import get_optimizations
    from .sources import resolve_model
    from .target import current_target

    target = current_target()
    if draft and not model:
        raise UsageError("--draft needs --model: whether a draft fits depends on the model")
    info = resolve_model(model).info(draft=resolve_model(draft, tokenizer=False) if draft else None) if model else None
    rows = []
    for name, opt in get_optimizations().items():
        rows.append({
            "name": name, "order": opt.order, "version": opt.version, "description": opt.description,
            "options": {o.name: list(o.choices) for o in opt.options()},
            "defaults": {o.name: o.default for o in opt.options()},
            "given": {o.name: o.default for o in opt.options() if o.given},
            "unavailable": unavailable_for(opt, target, info),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(report_text.plugins_table(rows, target))


@cli.command()
@click.argument("model", required=False)
@click.option("--set", "sets", multiple=True, metavar="PLUGIN.OPTION=VALUE", help="a recipe choice (repeatable)")
@click.option("--recipe", "recipe_file", default=None, metavar="FILE",
              help="a recipe file (autotune export): its model, workload and choices; --set and options override")
@click.option("--trial-timeout", "--timeout", "timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"seconds each measured recipe may take (default {BASELINE_TIMEOUT_S:.0f}; --timeout is an older "
                   "name)")
@click.option("--draft", default=None, metavar="MODEL",
              help="assisted decoding with this draft model (decoding.method=assisted, decoding.draft=MODEL)")
@click.option("--json", "as_json", is_flag=True)
@workload_options
@handle_errors
def bench(model, sets, recipe_file, timeout, draft, as_json, workload, device, config_only):
    """Measure one recipe against the HF-default baseline, side by side in one run."""
    from . import api, report_text
    from .registry import get_optimizations

    if not model and not recipe_file:
        raise UsageError("give a MODEL (or a --recipe file, which names one)")
    if draft is not None:
        sets = ("decoding.method=assisted", *sets, f"decoding.draft={draft}")
    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    result = api.bench(model, recipe_file, sets=sets, device=device, config_only=config_only, timeout=timeout,
                       workload=workload, on_status=say)
    if as_json:
        click.echo(json.dumps(result.payload, indent=2))
    else:
        click.echo(report_text.bench_text(result.payload, get_optimizations()))
    if not result.ok:
        sys.exit(1)


def study_options(fn):
    """What defines a search, shared by `search` and `submit`."""
    for decorator in reversed([
        click.argument("model", required=False),
        click.option("--budget", default=None, help="limits, e.g. \"tpot_p50<=25ms,memory<=4GiB,quality>=0.97\""),
        click.option("--objective", default=None,
                     help="throughput (default: tokens/s over the traffic mix), tpot, ttft, e2e, memory or cost "
                          "(comma list with --pareto)"),
        click.option("--pareto", is_flag=True, help="optimize several objectives at once; report the Pareto front"),
        click.option("--trials", type=click.IntRange(min=1), default=None,
                     help=f"measured trials (default {SearchSpec.trials})"),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="the whole search's seconds (a queued job's: from when its first worker starts it): "
                          "no trial starts that would typically end past them"),
        click.option("--trial-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="seconds one trial may take (default: derived from the baseline)"),
        click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help=f"default {SearchSpec.sampler}"),
        click.option("--study", "study_name", default=None, help="study name (resume by giving the same name)"),
        click.option("--study-file", type=click.Path(dir_okay=False), default=None,
                     help="a study definition (see studies/); command-line options override it"),
        click.option("--hardware", default=None,
                     help="for a queued job: where it may run: this (default), any, cpu, cuda, cuda>=40GiB"),
        click.option("--draft", default=None, metavar="MODEL",
                     help="a smaller model with the same tokenizer: adds assisted decoding to the space"),
    ]):
        fn = decorator(fn)
    return fn


def db_option(fn):
    return click.option("--db", "db_url", default=None, envvar="AUTOTUNE_DB", show_envvar=True,
                        help="SQLAlchemy URL of the tuning database (default: a SQLite file in the user data dir)")(fn)


def compile_cache_option(fn):
    """``--compile-cache URL``: the team compile cache (autotune.compile_share) this process and its
    trials read and write; it travels in the environment, so a daemon's workers use it too."""

    def use(ctx, param, value):
        import os

        from .compile_share import ENV, configured

        if value:
            try:
                os.environ[ENV] = configured(value)
            except UsageError as exc:
                raise click.BadParameter(str(exc).removeprefix("--compile-cache ")) from None
        return value

    return click.option("--compile-cache", default=None, envvar="AUTOTUNE_COMPILE_CACHE", show_envvar=True,
                        metavar="redis://...", expose_value=False, callback=use,
                        help="a Redis the team shares compiled artifacts through (verified by content hash)")(fn)


def open_store(db_url):
    from .store import Store

    return Store(db_url)


@cli.command()
@study_options
@click.option("--remeasure", is_flag=True, help="measure every candidate again, reusing nothing from the database")
@click.option("--jobs", default=None, metavar="N|auto",
              help="trials side by side: they compile at once, each measures alone (default auto: one; beside "
                   "another trial's compile a CPU trial's decode steps run many times slower, see README)")
@click.option("--side-by-side/--no-side-by-side", "side_by_side", default=None,
              help="at the end, measure the HF default and the best again back to back, so the ratio shown is of one "
                   "time (default on; done when the baseline is 2+ minutes old; counted in --timeout)")
@click.option("--submit", "submit_job", is_flag=True, help="queue the search as a job for `autotune daemon`")
@click.option("--price-per-hour", type=click.FloatRange(min=0, min_open=True), default=None, metavar="USD",
              help="what an hour of this machine costs: show cost per 1M output tokens (needed by --objective cost)")
@click.option("--finish-compiles", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="with a team compile cache: after the search, compile what it deferred or stopped at its cap in "
                   "the background, at idle priority, for this long at most, so the team's next search finds it "
                   "compiled (default: the search's --timeout, else 600; 0: off)")
@click.option("--json", "as_json", is_flag=True)
@workload_options
@compile_cache_option
@db_option
@handle_errors
def search(model, budget, objective, pareto, trials, timeout, trial_timeout, sampler, study_name, study_file,
           remeasure, submit_job, hardware, as_json, workload, device, config_only, db_url, price_per_hour=None,
           draft=None, jobs=None, side_by_side=None, finish_compiles=None):
    """Search the plugins' space for the best recipe within the budget, measuring every candidate."""
    from . import api, report_text
    from .errors import NoFeasibleRecipe

    given = dict(study_file=study_file, budget=budget, objective=objective, pareto=pareto or None, trials=trials,
                 timeout=timeout, trial_timeout=trial_timeout, sampler=sampler, study=study_name, device=device,
                 config_only=config_only or None, remeasure=remeasure, price_per_hour=price_per_hour, draft=draft,
                 jobs=jobs, workload=workload, side_by_side=side_by_side)
    if submit_job:
        if jobs is not None:
            raise UsageError("--jobs runs trials side by side in this search; a queued job's are the daemon's --workers")
        if remeasure:  # a job's workers reuse what the job measured (its baseline above all)
            raise UsageError("--remeasure applies to a search run here: a queued job's workers share what the database "
                             "holds, its baseline above all")
        _submit(open_store(db_url), api.search_spec(model, **given), hardware)
        return
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    result = api.search(model, db=db_url, progress=not as_json, on_status=say, **given)
    try:
        if result.best is None:
            raise NoFeasibleRecipe(result.binding)
        if as_json:
            click.echo(json.dumps(report_text.search_payload(result.raw, result.run), indent=2))
        else:
            click.echo(report_text.search_text(result.raw, result.run))
    finally:  # (when nothing fits too: the team's next search may find what this one could not compile)
        _finish_compiles(result, finish_compiles)


def _finish_compiles(result, budget_s) -> None:
    """What the search deferred or stopped at its compile cap, compiled in the background for the team
    (:mod:`autotune.backfill`); one line on stderr says so."""
    started = result.finish_compiles(budget_s)
    if started:
        measurer = result.run.measurer
        n = started["pending"]
        click.echo(f"compiling {n} candidate{'s' * (n != 1)} the search deferred or stopped at the cap, in the "
                   f"background at idle priority for {measurer.compile_share_display()} (at most "
                   f"{started['budget_s']:.0f} s; pid {started['pid']}; log {started['log']})", err=True)


@cli.command()
@click.option("--model", default=None)
@click.option("--best", "best_model", default=None, metavar="MODEL", help="only the best known recipe for MODEL")
@click.option("--all-targets", is_flag=True, help="recipes measured on any hardware")
@click.option("--hardware", "hardware_key", default=None, metavar="KEY",
              help="answer for another machine's hardware key (e.g. from `autotune db import`), not this one's")
@click.option("--failed", is_flag=True, help="include failed, pruned and invalid measurements")
@click.option("--json", "as_json", is_flag=True)
@db_option
@handle_errors
def recipes(model, best_model, all_targets, failed, as_json, db_url, hardware_key=None):
    """Recipes known for this machine, best first."""
    from . import report_text
    from .store import queries
    from .target import current_target

    from .budget import DEFAULT_QUALITY_FLOOR

    store, target = open_store(db_url), current_target()
    hardware = hardware_key or target.hardware_key
    if best_model:
        rows = [queries.best_for_model(store, best_model, hardware, DEFAULT_QUALITY_FLOOR,
                                       target.describe() if hardware_key is None else f"hardware {hardware_key}")]
    else:
        rows = queries.list_measurements(store, None if all_targets else hardware, model,
                                         include_failed=failed)
    if as_json:
        click.echo(json.dumps([report_text.measurement_row(r) for r in rows], indent=2))
    else:
        click.echo(report_text.recipes_text(rows, target))


@cli.command()
@click.argument("measurement_id", type=int)
@db_option
@handle_errors
def show(measurement_id, db_url):
    """One measured recipe (by the id `autotune recipes` lists): its choices, figures vs the
    baseline, and the target it was measured on."""
    from . import report_text
    from .store import queries

    row = queries.get_measurement(open_store(db_url), measurement_id)
    click.echo(report_text.show_text(row))


@cli.command()
@click.argument("measurement_id", type=int, required=False)
@click.option("--best", "best_model", default=None, metavar="MODEL", help="export the best known recipe for MODEL")
@click.option("-o", "--output", required=True, type=click.Path(), help="file (json) or directory (transformers)")
@click.option("--format", "fmt", type=click.Choice(["json", "transformers"]), default="json", show_default=True)
@db_option
@handle_errors
def export(measurement_id, best_model, output, fmt, db_url):
    """Write a stored recipe (by measurement id, or the best for a model) as a loadable JSON file
    or a plain-transformers directory."""
    from .export import stored_document, write_json, write_transformers_dir
    from .paths import output_file
    from .registry import get_optimizations
    from .sources import resolve_model
    from .target import current_target

    if (measurement_id is None) == (best_model is None):
        raise UsageError("give a measurement id or --best MODEL (one of them)")
    output = str(output_file(output, folder=fmt == "transformers"))
    store, target = open_store(db_url), current_target()
    ref = str(measurement_id) if measurement_id is not None else best_model
    doc = stored_document(store, ref, target, get_optimizations())
    if fmt == "json":
        write_json(doc, output)
    else:
        source = resolve_model(doc["model"], config_only=doc.get("config_only", False))
        write_transformers_dir(doc, source.path, output, get_optimizations(), target)
    click.echo(f"wrote recipe {doc['measurement_id']} ({doc['model']}) to {output}")


@cli.command()
@click.argument("measurement_id", type=int, required=False)
@click.option("--best", "best_model", default=None, metavar="MODEL",
              help="the best stored recipe for MODEL on this hardware (the regression gate)")
@click.option("--fail-under", type=click.FloatRange(min=0, min_open=True), default=None, metavar="RATIO",
              help="exit 1 when a speed figure keeps less than RATIO of its stored value, or quality falls "
                   "below its budget's floor (default 0.95 with --best or --json)")
@click.option("--json", "as_json", is_flag=True, help="print the verdict as JSON")
@click.option("--trial-timeout", "--timeout", "timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"seconds each re-measurement may take (default {BASELINE_TIMEOUT_S:.0f}; --timeout is an older "
                   "name)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@db_option
@handle_errors
def verify(measurement_id, best_model, fail_under, as_json, timeout, device, db_url):
    """Re-measure a stored recipe beside the HF default and compare with its stored figures; with
    --best / --fail-under, a regression gate for CI: one line per figure, exit 1 on a regression."""
    from . import api

    if (measurement_id is None) == (best_model is None):
        raise UsageError("give a measurement id or --best MODEL (one of them)")
    gate = best_model is not None or fail_under is not None or as_json
    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    result = api.verify(measurement_id if best_model is None else best_model, fail_under=fail_under, db=db_url,
                        timeout=timeout, device=device, on_status=say)
    if not gate:  # the plain report: one line, a failure to run is an error
        if result.status != Status.OK:
            raise AutotuneError(f"re-measuring recipe {result.measurement_id} failed ({result.status}): "
                                f"{result.error}")
        old, new = result.stored, result.now
        click.echo(f"recipe {result.measurement_id}: stored {old['tokens_per_s']:.1f} tok/s, now "
                   f"{new['tokens_per_s']:.1f} tok/s: ratio {new['tokens_per_s'] / old['tokens_per_s']:.2f}x "
                   f"(TPOT {old.get('tpot_ms_p50'):.2f} -> {new.get('tpot_ms_p50'):.2f} ms)")
        return
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else "\n".join(result.lines()))
    if not result.passed:
        sys.exit(1)


def _submit(store, spec, hardware):
    from . import jobqueue

    job_id = jobqueue.submit(store, spec, jobqueue.hardware_class(hardware, spec.target))
    click.echo(f"queued job {job_id}: {spec.source.name}, {spec.trials} trials, budget {spec.budget.text} "
               f"({store.display_url})")


@cli.command()
@study_options
@workload_options
@db_option
@handle_errors
def submit(model, budget, objective, pareto, trials, timeout, trial_timeout, sampler, study_name, study_file, hardware,
           workload, device, config_only, db_url, draft=None):
    """Queue a tuning job in the database; daemons on matching hardware work it off."""
    from .spec import build

    spec = build(study_file, model=model, budget=budget, objective=objective, pareto=pareto or None, trials=trials,
                 timeout=timeout, trial_timeout=trial_timeout, sampler=sampler, study_name=study_name, workload=workload,
                 device=device, config_only=config_only or None, draft=draft)
    _submit(open_store(db_url), spec, hardware)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@db_option
@handle_errors
def jobs(as_json, db_url):
    """Queued, running, done and failed jobs: where they run, since when, progress, best so far."""
    from . import jobqueue as queue
    from . import report_text

    rows = queue.list_jobs(open_store(db_url))
    click.echo(json.dumps(rows, indent=2) if as_json else report_text.jobs_text(rows))


@cli.command()
@click.argument("job_id", type=int)
@db_option
@handle_errors
def cancel(job_id, db_url):
    """Cancel a queued or running job (workers stop after their current trial)."""
    from . import jobqueue as queue

    state = queue.cancel(open_store(db_url), job_id)
    click.echo(f"job {job_id}: {state}")


@cli.command()
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="worker processes")
@click.option("--poll", type=float, default=5.0, show_default=True, help="seconds between looks at the queue")
@click.option("--heartbeat", type=click.IntRange(min=1), default=10, show_default=True, help="trial heartbeat (s)")
@click.option("--grace", type=click.IntRange(min=1), default=60, show_default=True,
              help="seconds without a heartbeat before a trial is failed and retried")
@click.option("--exit-when-idle", is_flag=True, help="exit when no job is left for this hardware (and, with a team compile cache, "
              "no compile its jobs deferred)")
@click.option("--reverify", is_flag=True, help="first re-measure stored recipes measured with other versions")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@compile_cache_option
@db_option
@handle_errors
def daemon(workers, poll, heartbeat, grace, exit_when_idle, reverify, device, db_url):
    """Work off queued tuning jobs that this hardware can run (one line per trial on stderr)."""
    import logging

    from .daemon import DaemonOptions, run_workers

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(message)s", stream=sys.stderr)
    logging.getLogger("autotune").setLevel(logging.INFO)  # one line per trial; library chatter stays out
    store = open_store(db_url)
    if store.engine.dialect.name == "sqlite":
        click.echo(f"note: {store.display_url} is SQLite: fine for workers on this host; for several hosts "
                   "use PostgreSQL", err=True)
    options = DaemonOptions(poll_s=poll, heartbeat_s=heartbeat, grace_s=grace, exit_when_idle=exit_when_idle)
    run_workers(store.url, workers, options, device, reverify)


@cli.command()
@click.option("--port", type=int, default=8080, show_default=True)
@db_option
@handle_errors
def dashboard(port, db_url):
    """Open optuna-dashboard on the tuning database (pip install optuna-dashboard)."""
    import shutil
    import subprocess

    store = open_store(db_url)
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        raise AutotuneError(f"optuna-dashboard is not installed: pip install optuna-dashboard, then run "
                            f"optuna-dashboard '{store.display_url}' --port {port}")
    sys.exit(subprocess.call([exe, store.url, "--port", str(port)]))


@cli.command()
@click.argument("ref", metavar="MODEL|STUDY|JOB_ID")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["html", "png"]), default=None,
              help="default: from the file name (.png -> png, else html)")
@db_option
@handle_errors
def report(ref, output, fmt, db_url):
    """A self-contained HTML report (or a PNG) of a study: what was tried, what won, why others lost."""
    from . import report as rep
    from .paths import output_file
    from .target import current_target

    output = str(output_file(output))
    data = rep.gather(open_store(db_url), ref, current_target())
    fmt = fmt or ("png" if output.lower().endswith(".png") else "html")
    try:
        page = None if fmt == "png" else rep.render_html(data)
        if fmt == "png":
            rep.render_png(data, output)
    except ImportError as exc:
        raise AutotuneError(f"the {fmt} report needs {exc.name}: pip install 'autotune[report]'") from None
    if page is not None:
        with open(output, "w", encoding="utf-8") as f:
            f.write(page)
    ruled_out = sum(1 for r in data.rows if r.status == Status.INVALID)
    click.echo(f"wrote {output}: {len(data.rows)} trials of study {data.study} ({len(data.rows) - ruled_out} measured, "
               f"{ruled_out} ruled out by the plugins' rules)")


@cli.group()
def db():
    """The tuning database: its schema, and moving results between databases."""


@db.command("export")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="a JSON-lines file")
@click.option("--model", default=None, help="only this model's measurements")
@click.option("--since", default=None, metavar="DATE", help="only measurements made on or after DATE (YYYY-MM-DD)")
@db_option
@handle_errors
def db_export(output, model, since, db_url):
    """Write measurements, with their targets, versions, workloads and recipes, to a file that
    `autotune db import` reads into another database."""
    from . import api

    n = api.export_results(output, db=db_url, model=model, since=since)
    click.echo(f"wrote {n} measurements to {output}")


@db.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@db_option
@handle_errors
def db_import(path, db_url):
    """Add the measurements of an exported file (one transaction; what the database holds is kept)."""
    from . import api

    added, skipped = api.import_results(path, db=db_url)
    click.echo(f"imported {added} measurements from {path} ({skipped} already known, skipped)")


@db.command()
@db_option
@handle_errors
def upgrade(db_url):
    """Upgrade the tuning database to this autotune's schema."""
    from .store import Store

    store = Store(db_url, upgrade=True)
    click.echo(f"{store.display_url} is at schema {store.revision()}")


def main():
    cli(prog_name="autotune")
