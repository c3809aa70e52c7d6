"""Plain-text and JSON renderings of plugins, measurements and recipes for the terminal."""
from __future__ import annotations

from .budget import cost_per_mtok, format_value
from .figures import SHOWN, Key, is_deferred
from .states import JobState, Status
from .recipe import describe


def plugins_table(rows: list[dict], target) -> str:
    lines = [f"target: {target.describe()}", ""]
    for row in rows:
        lines.append(f"{row['name']}  (order {row['order']}): {row['description']}")
        for option, choices in row["options"].items():
            if option in row.get("given", {}):
                lines.append(f"  {option}: given by the study, not searched")
                continue
            shown = []
            for c in choices:
                mark = "*" if c == row["defaults"][option] else ""
                shown.append(f"{c}{mark}" + (" (unavailable)" if f"{option}={c}" in row["unavailable"] else ""))
            lines.append(f"  {option}: {', '.join(shown)}")
        for key, reason in row["unavailable"].items():
            lines.append(f"  unavailable: {key}: {reason}")
        lines.append("")
    lines.append("* = default")
    return "\n".join(lines)


def figures(evaluation) -> dict:
    """Status, error and every measured figure (no token lists) of an evaluation."""
    return {"status": evaluation.status.value, "error": evaluation.error, **evaluation.figures.shown()}


def ratio(candidate: dict, baseline: dict, key: str, higher_is_better: bool = True):
    a, b = candidate.get(key), baseline.get(key)
    if not a or not b:
        return None
    return a / b if higher_is_better else b / a


def shape_ratio(candidate: dict, baseline: dict) -> float | None:
    """The geometric mean over the envelope's timed shapes of the candidate's tokens/s over the
    baseline's at the same shape (None unless both were timed at the same shapes)."""
    import math

    mine, theirs = candidate.get("shapes") or [], baseline.get("shapes") or []
    key = [(s["prompt_tokens"], s["new_tokens"]) for s in mine]
    if not mine or key != [(s["prompt_tokens"], s["new_tokens"]) for s in theirs]:
        return None
    logs = [math.log(a[Key.tokens_per_s] / b[Key.tokens_per_s]) for a, b in zip(mine, theirs)]
    return math.exp(sum(logs) / len(logs))


def shapes_lines(candidate: dict, baseline: dict, indent: str = "  ") -> list[str]:
    """One line per timed shape: tokens/s (and its ratio to the baseline's), TTFT, TPOT."""
    base = {(s["prompt_tokens"], s["new_tokens"]): s for s in baseline.get("shapes") or []}
    lines = []
    for s in candidate.get("shapes") or []:
        b = base.get((s["prompt_tokens"], s["new_tokens"]))
        vs = f" ({s['tokens_per_s'] / b['tokens_per_s']:.2f}x)" if b else ""
        lines.append(f"{indent}{s['prompt_tokens']:>5} + {s['new_tokens']:<4} tokens: {s['tokens_per_s']:7.1f} tok/s{vs}; "
                     f"TTFT {s['ttft_ms_p50']:.1f} ms; TPOT {s['tpot_ms_p50']:.2f} ms")
    return lines


def ratios(candidate: dict, baseline: dict) -> dict:
    """Candidate over baseline, each "higher is better" except memory (a share of the baseline's);
    ``tokens_per_s`` over the traffic mix, ``tokens_per_s_geomean`` the geometric mean of the shapes'
    ratios; ``noisy_baseline`` says when the baseline missed its CV target, ``loose`` why the ratios are
    loose (:func:`loose_baseline`; None: they are not)."""
    return {Key.tokens_per_s: ratio(candidate, baseline, Key.tokens_per_s),
            "tokens_per_s_geomean": shape_ratio(candidate, baseline),
            "tpot_speedup": ratio(candidate, baseline, Key.tpot_ms_p50, higher_is_better=False),
            "ttft_speedup": ratio(candidate, baseline, Key.ttft_ms_p50, higher_is_better=False),
            "memory": ratio(candidate, baseline, Key.peak_memory_bytes),
            "noisy_baseline": bool(baseline.get("noisy")), "loose": loose_baseline(baseline)}


def loose_baseline(baseline: dict) -> str | None:
    """Why ratios over this baseline are loose — measured in one round (a time-boxed search's HF
    default, ``pass_round``: its pair at the end gives the ratio), or noisy — or None: they are not."""
    if baseline.get("runs") == 1:
        return "the baseline was measured in one round: its spread is unknown"
    if baseline.get("noisy"):
        return f"the baseline is noisy: CV {baseline.get('cv', 0):.3f} at its repeat cap"
    return None


def noisy_note(baseline: dict) -> str:
    reason = loose_baseline(baseline)
    return f" ({reason}; treat ratios as loose)" if reason else ""


def bench_payload(candidate, baseline, target, workload, source) -> dict:
    c, b = figures(candidate), figures(baseline)
    return {
        "model": source.name, "config_only": source.config_only, "target": target.to_dict(),
        "workload": workload.to_dict(), "recipe": candidate.recipe, **c, "baseline": b, "ratio": ratios(c, b),
    }


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def fmt(v, digits=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def bench_text(p: dict, optimizations) -> str:
    b = p["baseline"]
    rows = [("", "baseline (HF default)", "recipe"),
            ("status", b["status"], p["status"]),
            ("tokens/s", fmt(b.get(Key.tokens_per_s)), fmt(p.get(Key.tokens_per_s))),
            ("TPOT p50 / p95 ms", f"{fmt(b.get('tpot_ms_p50'), 2)} / {fmt(b.get('tpot_ms_p95'), 2)}",
             f"{fmt(p.get('tpot_ms_p50'), 2)} / {fmt(p.get('tpot_ms_p95'), 2)}"),
            ("TTFT p50 / p95 ms", f"{fmt(b.get('ttft_ms_p50'))} / {fmt(b.get('ttft_ms_p95'))}",
             f"{fmt(p.get('ttft_ms_p50'))} / {fmt(p.get('ttft_ms_p95'))}"),
            ("e2e p50 ms", fmt(b.get(Key.e2e_ms_p50)), fmt(p.get(Key.e2e_ms_p50))),
            ("CV / runs", f"{fmt(b.get('cv'), 3)} / {fmt(b.get('runs'))}", f"{fmt(p.get('cv'), 3)} / {fmt(p.get('runs'))}"),
            ("MBU / tokens per step", f"{fmt(b.get('mbu'), 3)} / {fmt(b.get('tokens_per_step'), 2)}",
             f"{fmt(p.get('mbu'), 3)} / {fmt(p.get('tokens_per_step'), 2)}"),
            ("peak memory (timed runs)", fmt_bytes(b.get(Key.peak_memory_bytes)), fmt_bytes(p.get(Key.peak_memory_bytes))),
            ("peak memory (load) / weights", f"{fmt_bytes(b.get('load_peak_bytes'))} / {fmt_bytes(b.get('weights_bytes'))}",
             f"{fmt_bytes(p.get('load_peak_bytes'))} / {fmt_bytes(p.get('weights_bytes'))}"),
            ("load / compile s", f"{fmt(b.get('load_s'))} / {fmt(b.get('compile_s'))}",
             f"{fmt(p.get('load_s'))} / {fmt(p.get('compile_s'))}"),
            ("compiles in steady state", fmt(b.get("steady_compiles")), fmt(p.get("steady_compiles"))),
            ("quality (top-1 agreement)", fmt(b.get("quality"), 3), fmt(p.get("quality"), 3)),
            ("greedy match / first divergence", f"{fmt(b.get('greedy_match'), 3)} / {fmt(b.get('first_divergence'))}",
             f"{fmt(p.get('greedy_match'), 3)} / {fmt(p.get('first_divergence'))}"),
            ("perplexity", fmt(b.get("perplexity"), 2), fmt(p.get("perplexity"), 2))]
    width = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"recipe: {describe(p['recipe'], optimizations)}"]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, width)) for r in rows]
    r = p["ratio"]
    if p.get("shapes"):
        lines.append("per timed shape (prompt + new tokens), recipe vs baseline:")
        lines += shapes_lines(p, b)
    if r[Key.tokens_per_s]:
        geo = f" ({r['tokens_per_s_geomean']:.2f}x over the shapes, geometric mean)" if r.get("tokens_per_s_geomean") else ""
        lines.append(f"ratio: {r['tokens_per_s']:.2f}x tokens/s{geo}, TPOT {r['tpot_speedup']:.2f}x faster, "
                     f"memory {r['memory']:.2f}x of baseline{noisy_note(b)}")
    for who, d in (("baseline", b), ("recipe", p)):
        if d.get("error"):
            lines.append(f"{who} {d['status']}: {d['error']}")
    if p.get("config_only"):
        lines.append("note: config-only model (random weights): speed is valid, quality figures are not")
    return "\n".join(lines)


def space_summary(space) -> str:
    from .space import count

    n_options = sum(len(o) for o in space.values())
    return f"{count(space):,} distinct recipes over {n_options} options"


class Progress:
    """A progress bar on stderr: trials done, the candidate being measured, best so far."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.bar, self.best = total, enabled, None, None

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

            self.bar = tqdm(total=self.total, unit="trial", dynamic_ncols=True, leave=True)
        return self

    def set_status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"measuring {text[:60]}")

    def trial_done(self, record, search) -> None:
        if self.bar is None:
            return
        key, direction = search.spec.objectives[0]
        if record.feasible:
            value = record.figures.get(key)
            if self.best is None or (value < self.best if direction == "minimize" else value > self.best):
                self.best = value
        if record.status != Status.INVALID:
            self.bar.update(1)
        best = "-" if self.best is None else format_value(key, self.best)
        self.bar.set_postfix_str(f"last: {record.status}{' (reused)' if record.reused else ''}, best {best}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def measurement_row(r) -> dict:
    return {"id": r.id, "model": r.model.name, "config_only": r.model.config_only, "status": r.status,
            "recipe": r.recipe.recipe, "study": r.study,
            "target": r.target.name, "hardware_key": r.target.hardware_key, Key.tokens_per_s: r.tokens_per_s, Key.tpot_ms_p50: r.tpot_ms_p50,
            Key.ttft_ms_p50: r.ttft_ms_p50, Key.peak_memory_bytes: r.peak_memory_bytes, "quality": r.quality,
            "error": r.error, "stale": r.stale, "workload": r.workload.definition and {
                k: v for k, v in r.workload.definition.items() if k != "prompts"}}


def recipes_text(rows, target) -> str:
    from .registry import get_optimizations

    if not rows:
        return f"no recipes yet for {target.describe()}: run `autotune search MODEL`"
    optimizations = get_optimizations()
    lines = [f"{'id':>5}  {'model':<22} {'tok/s':>7} {'TPOT ms':>8} {'memory':>10} {'quality':>7}  recipe"]
    for r in rows:
        mark = " (stale)" if r.stale else ""
        mark += " (config-only)" if r.model.config_only else ""
        tail = describe(r.recipe.recipe, optimizations)
        if r.status != Status.OK:
            tail = f"{r.status}: {r.error}" + (f" [{tail}]" if r.status == Status.PRUNED else "")
        lines.append(f"{r.id:>5}  {r.model.name[:22]:<22} {fmt(r.tokens_per_s):>7} {fmt(r.tpot_ms_p50, 2):>8} "
                     f"{fmt_bytes(r.peak_memory_bytes):>10} {fmt(r.quality, 3):>7}  {tail}{mark}")
    return "\n".join(lines)


def show_text(r) -> str:
    import json as _json

    f, b = r.figures or {}, getattr(r, "baseline_figures", None) or {}
    lines = [f"measurement {r.id}: {r.model.name}{' (config-only)' if r.model.config_only else ''}  [{r.status}]",
             f"study: {r.study}",
             f"target: {r.target.name} ({r.target.device}); versions: " +
             ", ".join(f"{k} {v}" for k, v in r.target.fingerprint.get("versions", {}).items()),
             "workload: " + ", ".join(f"{k}={v}" for k, v in r.workload.definition.items() if k != "prompts"),
             "recipe:", _json.dumps(r.recipe.recipe, indent=2)]
    if r.error:
        lines.append(f"error: {r.error}")
    for figure in SHOWN:
        key, label, higher = figure.key, figure.label, None if figure.better is None else figure.better == "higher"
        val, base = f.get(key), b.get(key)
        shown = fmt_bytes(val) if key.endswith("_bytes") else fmt(val, 2)
        based = fmt_bytes(base) if key.endswith("_bytes") else fmt(base, 2)
        ratio_text = ""
        if val and base and higher is not None:
            ratio_text = f"  ({(val / base if higher else base / val):.2f}x vs baseline)"
        lines.append(f"  {label:<22} {shown:>12}   baseline {based:>12}{ratio_text}")
    if f.get("shapes"):
        geo = shape_ratio(f, b)
        lines.append("  per timed shape (prompt + new tokens)" + (f": {geo:.2f}x the baseline's tokens/s, geometric mean"
                                                              if geo else ""))
        lines += shapes_lines(f, b, indent="    ")
    lines += notes(f, b)
    return "\n".join(lines)


def notes(f, b) -> list[str]:
    """What a measurement's figures (``f``, over the baseline's ``b``) leave loose, a line each."""
    lines = []
    if f.get("screened"):
        lines.append(f"  note: screened: measured {f.get('runs')} round(s) only, then found slower than the leader "
                     "beyond the screen (one round) or race (two or more) factor: a loser's figures, less precise"
                     + ("; its greedy match was not measured (no budget named it)" if f.get("greedy_match") is None
                        else "")
                     + (f"; its longer shapes decoded {f.get('decode_sampled')} of their new tokens, the rest extrapolated from "
                        "those steps" if f.get("decode_sampled") else ""))
    loose = loose_baseline(b)
    if loose:
        lines.append(f"  note: {loose}: ratios are loose")
    if f.get("noisy"):
        lines.append(f"  note: noisy measurement (CV {fmt(f.get('cv'), 3)} at its repeat cap): its figures are loose")
    return lines


def search_payload(result, search) -> dict:
    base = result.baseline.figures.shown() if result.baseline else {}
    price = getattr(search.spec, "price_per_hour", None)

    def one(rec):
        shown = rec.figures.shown()
        row = {"measurement_id": rec.measurement_id, "number": rec.number, "recipe": rec.recipe,
               "status": rec.status.value, "error": rec.error, "reused": rec.reused, "feasible": rec.feasible,
               "missed": rec.missed, **shown, "output_ids": rec.figures.output_ids,
               "speedup_tokens_per_s": ratio(shown, base, Key.tokens_per_s)}
        if price is not None:
            row["cost_per_mtok"] = cost_per_mtok(shown.get(Key.tokens_per_s), price)
        return row

    return {"study": result.study_name, "budget": search.budget.text, "interrupted": result.interrupted,
            "price_per_hour": price, "binding": result.binding,
            "trial_limit_s": result.trial_limit_s, "time": time_split(result.records, result.wall_s),
            "counts": outcome_counts(result.records), "compile_prediction": prediction_payload(search),
            "best": [one(r) for r in result.best], "baseline": one(result.baseline) if result.baseline else None,
            "trials": [one(r) for r in result.records], "side_by_side": side_by_side_payload(result)}


def side_by_side_payload(result) -> dict | None:
    """The side-by-side measurement at the end, with its ratios (None when not made)."""
    sbs = getattr(result, "side_by_side", None)
    if not sbs or sbs.get("error"):
        return sbs
    return {**sbs, "speedup_tokens_per_s": ratio(sbs["best"], sbs["baseline"], Key.tokens_per_s),
            "speedup_geomean": shape_ratio(sbs["best"], sbs["baseline"])}


def prediction_payload(search) -> dict | None:
    measurer = getattr(search, "measurer", None)
    cost = measurer and measurer.caps.cost
    if cost is None:
        return None
    error, n = cost.error()
    compiled, m = cost.error(compiled_only=True)
    return {"median_error": error, "held_back": n, "median_error_compiled": compiled, "held_back_compiled": m}


def time_split(records, search_wall_s: float | None = None) -> dict:
    """Where the wall time of this run's measured trials went (reused and rule-pruned ones cost none,
    nor those of the study an earlier run measured: a second host resuming the first's study counted
    them, 95% of its wall time "in measured windows"). Trials run side by side (``--jobs``) overlap, so
    the share in measured windows is of the search's own wall time when it is given
    (``search_wall_s``), else of the trials' summed."""
    measured = [r.figures for r in records if this_run(r) and r.figures.wall_s]
    parts = {k: sum(f.get(k, 0.0) for f in measured)
             for k in ("load_s", "first_call_s", "envelope_pass_s", "warmup_s", "measure_s", "quality_s", "wall_s",
                       "paused_s")}
    wall = search_wall_s or parts["wall_s"]
    timed = sum(timed_s(f) for f in measured)
    return {"trials_measured": len(measured), **parts, "search_wall_s": search_wall_s, "timed_s": timed,
            "measured_share": timed / wall if wall else None}


def this_run(record) -> bool:
    """Whether this run measured ``record`` (not reused from another study, nor an earlier run's)."""
    return not getattr(record, "reused", False) and not getattr(record, "earlier", False)


def timed_s(f) -> float:
    """The seconds of a trial's calls its figures were taken from: its measured rounds, or — where its
    envelope pass and warm typical call were its one round (screened on the pass, or a time-boxed search's
    HF default) — those, and they and its rounds where they were its first round (``pass_first``)."""
    if f.get("pass_first"):
        return (f.get("measure_s") or 0.0) + (f.get("envelope_pass_s") or 0.0) + (f.get("warmup_s") or 0.0)
    if f.get("measure_s"):
        return f.measure_s
    if f.get("runs") == 1 and f.get("shapes"):
        return (f.get("envelope_pass_s") or 0.0) + (f.get("warmup_s") or 0.0)
    return 0.0


def outcome_counts(records) -> dict:
    """What this study's trials taught: recipes with figures (ok, within the budget or not), the
    pruned by reason (stopped at the compile cap, deferred on a predicted compile, hopeless), the
    failed, and the rule-pruned (invalid, free)."""
    out = {"with_figures": 0, "within_budget": 0, "screened": 0, "sampled": 0, "pruned_at_cap": 0, "deferred": 0,
           "hopeless": 0, "failed": 0, "ruled_out": 0, "with_figures_this_run": 0}
    for r in records:
        if r.status == Status.OK:
            out["with_figures"] += 1
            out["with_figures_this_run"] += this_run(r)
            out["within_budget"] += r.feasible
            out["screened"] += bool(r.figures.screened)
            out["sampled"] += bool(r.figures.decode_sampled)
        elif r.status == Status.PRUNED:
            reason = ("deferred" if is_deferred(r.figures) else
                      "pruned_at_cap" if r.figures.first_call_cap_s is not None else "hopeless")
            out[reason] += 1
        elif r.status == Status.INVALID:
            out["ruled_out"] += 1
        else:
            out["failed"] += 1
    return out


def shared_lines(records, url: str | None) -> list[str]:
    """What the team compile cache did for this run's trials: loaded, refused (each refusal's line)."""
    if not url:
        return []
    from .compile_share import mask

    notes = [r.figures.compile_shared for r in records if not r.reused and r.figures.compile_shared]
    saved = sum(1 for r in records if not r.reused and r.figures.compile_artifact)
    loaded = sum(1 for n in notes if n.startswith("loaded"))
    lines = [f"team compile cache {mask(url)}: {loaded} trials loaded compiled artifacts, {saved} saved theirs"]
    lines += [f"  {n}" for n in dict.fromkeys(n for n in notes if not n.startswith("loaded"))]
    return lines


def counts_text(c: dict, prediction: tuple | None = None, compiled: tuple | None = None) -> str:
    pruned = c["pruned_at_cap"] + c["deferred"] + c["hopeless"]
    mine = c.get("with_figures_this_run", c["with_figures"])
    text = (f"recipes with figures: {c['with_figures']} ("
            + (f"{mine} measured by this run; " if mine != c["with_figures"] else "")
            + f"{c['within_budget']} within the budget, "
            f"{c.get('screened', 0)} screened: measured no further once slower than the best so far"
            + (f", {c['sampled']} of them on sampled decode" if c.get("sampled") else "") + "); "
            f"pruned: {pruned} ({c['pruned_at_cap']} at the compile cap, {c['deferred']} deferred on a "
            f"predicted compile, {c['hopeless']} hopeless); failed: {c['failed']}; "
            f"ruled out by the rules: {c['ruled_out']}")
    if prediction and prediction[0] is not None:
        text += f"\ncompile-time prediction: median error {100 * prediction[0]:.0f}% over {prediction[1]} " \
                "first calls of this model here, each held back in turn"
        if compiled and compiled[0] is not None and compiled[1] != prediction[1]:
            text += f" ({100 * compiled[0]:.0f}% over the {compiled[1]} that compile)"
    return text


def search_text(result, search) -> str:
    base = result.baseline.figures.shown() if result.baseline else {}
    counts: dict[str, int] = {}
    for r in result.records:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    reused = sum(1 for r in result.records if r.reused)
    earlier = sum(1 for r in result.records if r.earlier)
    lines = [f"study {result.study_name}: {len(result.records)} trials (" +
             ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + (f"; {reused} reused" if reused else "")
             + (f"; {earlier} from its earlier runs" if earlier else "") + ")"]
    split = time_split(result.records, result.wall_s)
    if split["trials_measured"]:
        side = (f" ({result.lanes} side by side: {split['wall_s']:.0f} s of trials, {split['paused_s']:.0f} s of it "
                "stopped while another measured)" if result.lanes > 1 else "")
        lines.append(f"time: {split['trials_measured']} measured trials in "
                     f"{split['search_wall_s'] or split['wall_s']:.0f} s{side}; "
                     f"{100 * split['measured_share']:.0f}% in measured windows, the calls the figures came from (load {split['load_s']:.0f} s, "
                     f"first calls {split['first_call_s']:.0f} s, envelope passes {split['envelope_pass_s']:.0f} s, "
                     f"quality {split['quality_s']:.0f} s); "
                     f"trial limit {fmt(result.trial_limit_s, 0)} s")
    measurer = getattr(search, "measurer", None)
    lines += shared_lines(result.records, measurer and measurer.compile_cache)
    cost = measurer.caps.cost if measurer else None
    lines.append(counts_text(outcome_counts(result.records), cost.error() if cost else None,
                             cost.error(compiled_only=True) if cost else None))
    if result.interrupted:
        lines.append("interrupted: run the same command again to resume")
    for i, r in enumerate(result.best):
        f = r.figures
        speed = ratio(f.shown(), base, Key.tokens_per_s)
        ratio_text = f" = {speed:.2f}x the HF default{noisy_note(base)}" if speed else ""
        lines.append(f"{'best' if i == 0 else 'front'}: recipe {r.measurement_id}: {describe(r.recipe, search.optimizations)}")
        lines.append(f"  {fmt(f.tokens_per_s)} tok/s{cost_text(f.tokens_per_s, search)}{ratio_text}; TPOT p50 {fmt(f.tpot_ms_p50, 2)} ms; "
                     f"TTFT p50 {fmt(f.ttft_ms_p50)} ms; MBU {fmt(f.mbu, 2)}; memory {fmt_bytes(f.peak_memory_bytes)}; "
                     f"quality {fmt(f.quality, 3)}; greedy match {fmt(f.greedy_match, 3)}")
        if i == 0 and len(f.shapes) > 1:
            geo = shape_ratio(f.shown(), base)
            lines.append(f"  over the envelope ({search.spec.workload.describe().split('; ')[-1]})"
                         + (f": {geo:.2f}x the HF default per shape, geometric mean" if geo else ""))
            lines += shapes_lines(f.shown(), base, indent="    ")
    if getattr(result, "side_by_side", None):
        lines += side_by_side_lines(result.side_by_side)
    lines.append(f"export: autotune export {result.best[0].measurement_id} -o recipe.json")
    return "\n".join(lines)


def side_by_side_lines(sbs: dict) -> list[str]:
    """The HF default and the best measured again back to back at the end of a search: the ratio
    both sides' figures of one time make (the trial's ratio is against a baseline of minutes before)."""
    if sbs.get("error"):
        return [f"side by side at the end: not measured: {sbs['error']}"]
    base, best = sbs["baseline"], sbs["best"]
    speed, geo = ratio(best, base, Key.tokens_per_s), shape_ratio(best, base)
    lines = [f"side by side at the end (the HF default, then recipe {sbs['measurement_id']}, started "
             f"{sbs['apart_s']:.0f} s apart; {sbs.get('seconds', 0):.0f} s): {fmt(best.get(Key.tokens_per_s))} against "
             f"{fmt(base.get(Key.tokens_per_s))} tok/s = {speed:.2f}x the HF default{noisy_note(base)}"
             + (f"; {geo:.2f}x per shape, geometric mean" if geo else "")]
    return lines + shapes_lines(best, base, indent="    ")


def cost_text(tokens_per_s, search) -> str:
    """`` ($0.42 per 1M output tokens)`` when the search was given a price per hour."""
    price = getattr(search.spec, "price_per_hour", None)
    cost = cost_per_mtok(tokens_per_s, price)
    return "" if cost is None else f" (${cost:,.2f} per 1M output tokens at ${price:g}/h)"


def jobs_text(rows: list[dict]) -> str:
    if not rows:
        return "no jobs: queue one with `autotune submit MODEL --budget ...`"
    lines = [f"{'id':>4}  {'state':<9} {'model':<24} {'trials':>7}  {'best TPOT':>9}  hardware / workers"]
    for r in rows:
        workers = ", ".join(f"{w['host']}:{w['pid']} since {w['since']}" for w in r["workers"]) or "-"
        best = f"{r['best_tpot_ms_p50']:.2f} ms" if r["best_tpot_ms_p50"] else "-"
        lines.append(f"{r['id']:>4}  {r['state']:<9} {r['model'][:24]:<24} {r['trials_done']:>3}/{r['trials_planned']:<3}"
                     f"  {best:>9}  {r['hardware']} / {workers}")
        if r["message"] and r["state"] in (JobState.FAILED, JobState.CANCELLED):
            lines.append(f"      {r['message']}")
    return "\n".join(lines)
