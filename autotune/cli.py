"""The command line. The only module that knows about click: library errors become one-line
messages here (exit 2 for usage errors, 1 for failures), never tracebacks."""
from __future__ import annotations

import functools
import json
import sys

import click

from .errors import AutotuneError, UsageError


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
    return wrapper


@click.group()
@click.version_option(package_name="autotune")
def cli():
    """Find the fastest way to run an LLM on this machine within a latency / memory / quality budget."""


def workload_options(fn):
    fn = click.option("--prompt-tokens", type=click.IntRange(min=1), default=32, show_default=True,
                      help="tokens in every prompt")(fn)
    fn = click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
                      help="tokens generated per call (exactly)")(fn)
    fn = click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)(fn)
    fn = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                      help="default: cuda when present, else cpu")(fn)
    fn = click.option("--config-only", is_flag=True,
                      help="random weights from config.json: speed is valid, quality is not")(fn)
    return fn


def make_workload(prompt_tokens, new_tokens, batch_size):
    from .workload import Workload

    return Workload(prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=batch_size)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@handle_errors
def plugins(as_json):
    """Every optimization, its options and choices, and what is unavailable here and why."""
    from . import report_text
    from .plugins import get_optimizations
    from .target import current_target

    target = current_target()
    rows = []
    for name, opt in get_optimizations().items():
        rows.append({
            "name": name, "order": opt.order, "description": opt.description,
            "options": {o.name: list(o.choices) for o in opt.options()},
            "defaults": {o.name: o.default for o in opt.options()},
            "unavailable": opt.unavailable(target),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(report_text.plugins_table(rows, target))


@cli.command()
@click.argument("model")
@click.option("--set", "sets", multiple=True, metavar="PLUGIN.OPTION=VALUE", help="a recipe choice (repeatable)")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="seconds per measured recipe")
@click.option("--json", "as_json", is_flag=True)
@workload_options
@handle_errors
def bench(model, sets, timeout, as_json, prompt_tokens, new_tokens, batch_size, device, config_only):
    """Measure one recipe against the HF-default baseline, side by side in one run."""
    from . import report_text
    from .evaluate import evaluate
    from .models import resolve_model
    from .plugins import get_optimizations
    from .recipe import parse_sets, resolve
    from .target import current_target

    optimizations = get_optimizations()
    recipe = resolve(parse_sets(sets, optimizations), optimizations)
    workload = make_workload(prompt_tokens, new_tokens, batch_size)
    target = current_target(device)
    source = resolve_model(model, config_only=config_only)
    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    say(f"target: {target.describe()}; workload: {workload.describe()}")
    say("measuring the HF-default baseline ...")
    baseline = evaluate(source, resolve({}, optimizations), workload, target, optimizations, timeout=timeout)
    say("measuring the recipe ...")
    candidate = evaluate(source, recipe, workload, target, optimizations,
                         baseline=baseline if baseline.ok else None, timeout=timeout)
    payload = report_text.bench_payload(candidate, baseline, target, workload, source)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(report_text.bench_text(payload, optimizations))
    if not candidate.ok:
        sys.exit(1)


def main():
    cli(prog_name="autotune")
