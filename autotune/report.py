"""The study report: one self-contained HTML file (plotly.js inlined, works offline) or a PNG.

Reads only the tuning database, so it works on SQLite and PostgreSQL and on a study that is still
running. What a person needs in ten seconds comes first: what won, by how much, and why the others
lost; the details (every trial, fingerprint, recipe to copy) follow."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

from .budget import Budget, cost_per_mtok, parse_budget
from .export import recipe_document
from .figures import Figures, Key
from .states import Status
from .recipe import describe
from .registry import get_optimizations
from . import study as protocol
from .store import queries

STATUS_COLOURS = {"ok": "#1a9850", "over budget": "#fdae61", "pruned": "#4393c3", "error": "#d73027",
                  "oom": "#7b3294", "crash": "#000000", "timeout": "#8c510a", "invalid": "#999999"}


@dataclass
class Row:
    number: int
    measurement_id: int | None
    status: str  # ok / over budget / error / oom / crash / timeout / invalid
    recipe: dict
    label: str
    figures: dict
    error: str | None = None
    missed: list[str] = field(default_factory=list)


@dataclass
class ReportData:
    study: str
    model: str
    budget: Budget
    objective: str
    target: dict
    workload: dict
    rows: list[Row]
    baseline: dict | None
    chosen: Row | None
    binding: str | None
    document: dict | None
    price_per_hour: float | None = None  # US dollars, when the study was given one


def gather(store, ref: str, target) -> ReportData:
    """Everything the report shows, from the database alone."""
    import optuna

    optimizations = get_optimizations()
    st = queries.find_study(store, ref, target.hardware_key)
    budget = parse_budget(st.budget)
    study = optuna.load_study(study_name=st.name, storage=store.optuna_storage())
    trials = study.get_trials(deepcopy=False)
    wanted = list(protocol.measurement_ids(study))
    by_id = queries.by_ids(store, wanted + [i for i in (st.baseline_measurement_id,) if i])
    base = by_id.get(st.baseline_measurement_id)
    if base is None:
        base = next((by_id[i] for i in wanted if by_id.get(i) is not None and by_id[i].is_baseline
                     and by_id[i].status == Status.OK), None)
    baseline = dict(base.figures) if base is not None else None
    rows = []
    for t in trials:
        mid = protocol.measurement_id(t)
        if mid not in by_id:
            continue  # still running
        m = by_id[mid]
        row = Row(t.number, mid, m.status, m.recipe.recipe, describe(m.recipe.recipe, optimizations),
                  dict(m.figures or {}), m.error)
        if m.status == Status.OK:
            row.missed = budget.missed(Figures.from_dict(row.figures))
            if row.missed:
                row.status = "over budget"
        rows.append(row)
    chosen = next((r for r in rows if r.measurement_id == st.best_measurement_id), None)
    binding = None
    if not any(r.status == Status.OK for r in rows):
        binding = budget.explain_miss((r.label, Figures.from_dict(r.figures)) for r in rows if r.status == "over budget")
    doc = None
    if chosen is not None:
        doc = recipe_document(model=st.model.name, config_only=st.model.config_only, recipe=chosen.recipe,
                              workload=st.workload.definition, target=st.target.fingerprint, figures=chosen.figures,
                              baseline=baseline, measurement_id=chosen.measurement_id, study=st.name)
        doc["figures"].pop("output_ids", None)
        if doc.get("baseline"):
            doc["baseline"].pop("output_ids", None)
    return ReportData(st.name, st.model.name, budget, st.objective, st.target.fingerprint, st.workload.definition, rows,
                      baseline, chosen, binding, doc, study.user_attrs.get(protocol.Attr.PRICE_PER_HOUR))


# -- figures -----------------------------------------------------------------------------------
def pareto_figure(data: ReportData):
    import plotly.graph_objects as go

    fig = go.Figure()
    measured = [r for r in data.rows if r.figures.get(Key.tpot_ms_p50) is not None]
    top = max((r.figures[Key.tpot_ms_p50] for r in measured), default=1.0) * 1.15
    for status, colour in STATUS_COLOURS.items():
        group = [r for r in data.rows if r.status == status]
        if not group:
            continue
        failed = status not in ("ok", "over budget")
        xs = [r.figures[Key.peak_memory_bytes] / 2**20 if not failed else None for r in group]
        if failed:  # no figures: a row of crosses along the top, one per trial
            lo = min((r.figures[Key.peak_memory_bytes] / 2**20 for r in measured), default=0)
            hi = max((r.figures[Key.peak_memory_bytes] / 2**20 for r in measured), default=1)
            xs = [lo + (hi - lo) * (i + 0.5) / len(group) for i in range(len(group))]
        ys = [top if failed else r.figures[Key.tpot_ms_p50] for r in group]
        hover = [f"trial {r.number}: {html.escape(r.label)}<br>{status}" +
                 (f": {html.escape(str(r.error))[:200]}" if r.error else "") +
                 ("" if failed else f"<br>TPOT {r.figures['tpot_ms_p50']:.2f} ms, "
                  f"{r.figures['peak_memory_bytes'] / 2**20:.0f} MiB, quality {r.figures.get('quality') or 0:.3f}, "
                  f"MBU {r.figures.get('mbu') or 0:.2f}")
                 for r in group]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{status} ({len(group)})", text=hover,
                                 hoverinfo="text", marker=dict(color=colour, size=11,
                                                               symbol="x" if failed else "circle")))
    if data.chosen is not None and data.chosen.figures.get(Key.tpot_ms_p50) is not None:
        fig.add_trace(go.Scatter(x=[data.chosen.figures[Key.peak_memory_bytes] / 2**20],
                                 y=[data.chosen.figures[Key.tpot_ms_p50]], mode="markers", name="chosen recipe",
                                 text=[f"chosen: {html.escape(data.chosen.label)}"], hoverinfo="text",
                                 marker=dict(symbol="star", size=22, color="#2166ac",
                                             line=dict(width=2, color="white"))))
    roof = roofline_ms(data.chosen)
    if roof is not None:  # what memory bandwidth allows the chosen recipe: no step can be faster
        fig.add_hline(y=roof, line_dash="dot", line_color="#555555",
                      annotation_text=f"memory roofline of the chosen recipe ({roof:.2f} ms)")
    for lim in data.budget.limits:
        if lim.key == Key.tpot_ms_p50:
            fig.add_hline(y=lim.value, line_dash="dash", line_color="#b2182b", annotation_text=f"budget {lim}")
        if lim.key == Key.peak_memory_bytes:
            fig.add_vline(x=lim.value / 2**20, line_dash="dash", line_color="#b2182b", annotation_text=f"budget {lim}")
    fig.update_layout(title="Every trial: latency against peak memory (lower-left is better)",
                      xaxis_title="peak memory (MiB)", yaxis_title="TPOT p50 (ms per token)", height=520,
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=60, l=60, r=20))
    return fig


def roofline_ms(row) -> float | None:
    """The TPOT at 100% MBU for a measured row: its bytes per step at the target's bandwidth
    (recovered from its own TPOT and MBU, per output token)."""
    f = row.figures if row is not None else {}
    if not (f.get(Key.mbu) and f.get(Key.tpot_ms_p50)):
        return None
    return f[Key.tpot_ms_p50] * f[Key.mbu]


def speedup_figure(data: ReportData):
    import plotly.graph_objects as go

    base = (data.baseline or {}).get(Key.tokens_per_s)
    ok = sorted((r for r in data.rows if r.figures.get(Key.tokens_per_s) and base), key=lambda r: r.figures[Key.tokens_per_s])
    fig = go.Figure(go.Bar(
        x=[r.figures[Key.tokens_per_s] / base for r in ok], y=[f"#{r.number}" for r in ok], orientation="h",
        text=[f"{r.figures['tokens_per_s'] / base:.2f}x" for r in ok], hovertext=[r.label for r in ok],
        marker_color=[STATUS_COLOURS[r.status] if r is not data.chosen else "#2166ac" for r in ok]))
    fig.add_vline(x=1.0, line_dash="dot", annotation_text="HF default")
    fig.update_layout(title="Speed-up over the HF default (tokens/s)",
                      xaxis_title="x HF default", height=max(300, 22 * len(ok) + 120), margin=dict(t=60, l=60))
    return fig


def importance(data: ReportData) -> list[tuple[str, float, str]]:
    """Which options mattered: for each option, the spread of the median TPOT between its choices
    (successful trials only). Robust with few trials, unlike fitted importances."""
    import statistics

    ok = [r for r in data.rows if r.figures.get(Key.tpot_ms_p50) is not None]
    out = []
    options = {(p, o) for r in ok for p, opts in r.recipe.items() for o in opts}
    for plugin, option in sorted(options):
        groups: dict = {}
        for r in ok:
            if option in r.recipe.get(plugin, {}):
                groups.setdefault(str(r.recipe[plugin][option]), []).append(r.figures[Key.tpot_ms_p50])
        if len(groups) < 2:
            continue
        medians = {k: statistics.median(v) for k, v in groups.items()}
        best = min(medians, key=medians.get)
        spread = max(medians.values()) - min(medians.values())
        out.append((f"{plugin}.{option}", spread, f"best choice: {best} ({medians[best]:.2f} ms)"))
    return sorted(out, key=lambda x: -x[1])


def importance_figure(data: ReportData):
    import plotly.graph_objects as go

    imp = importance(data)[:12][::-1]
    fig = go.Figure(go.Bar(x=[i[1] for i in imp], y=[i[0] for i in imp], orientation="h",
                           hovertext=[i[2] for i in imp], text=[i[2] for i in imp], textposition="auto"))
    fig.update_layout(title="Which options mattered (TPOT spread, ms)",
                      xaxis_title="ms per token", height=max(300, 28 * len(imp) + 120), margin=dict(t=60, l=200))
    return fig


# -- page --------------------------------------------------------------------------------------
def headline(data: ReportData) -> str:
    counts: dict[str, int] = {}
    for r in data.rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    tried = f"{len(data.rows)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if data.chosen is None:
        return f"<p class='bad'>Nothing met the budget ({html.escape(data.budget.text)}). " \
               f"{html.escape(data.binding or '')}</p><p>{tried}</p>"
    f, base = data.chosen.figures, data.baseline or {}
    ratio = f"{f['tokens_per_s'] / base['tokens_per_s']:.2f}x the HF default" if base.get(Key.tokens_per_s) else ""
    why = {}
    for r in data.rows:
        if r.status == "over budget":
            for lim in r.missed:
                why[lim.split("<=")[0].split(">=")[0]] = why.get(lim.split("<=")[0].split(">=")[0], 0) + 1
    lost = ", ".join(f"{n} missed {k}" for k, n in why.items())
    cost = cost_per_mtok(f.get(Key.tokens_per_s), data.price_per_hour)
    priced = f", ${cost:,.2f} per 1M output tokens at ${data.price_per_hour:g}/h" if cost is not None else ""
    return (f"<p class='win'>Winner: <b>{html.escape(data.chosen.label)}</b> — <b>{ratio}</b> "
            f"({f['tokens_per_s']:.1f} vs {base.get('tokens_per_s', 0):.1f} tokens/s{priced}), TPOT p50 "
            f"{f['tpot_ms_p50']:.2f} ms, {f['peak_memory_bytes'] / 2**20:.0f} MiB peak, quality "
            f"{(f.get('quality') or 0):.3f}.</p><p>{tried}{'; over budget: ' + lost if lost else ''}.</p>")


def trials_table(data: ReportData) -> str:
    cols = [("#", lambda r: r.number), ("status", lambda r: r.status), ("recipe", lambda r: r.label),
            ("tok/s", lambda r: r.figures.get(Key.tokens_per_s)),
            ("$ / 1M tokens", lambda r: cost_per_mtok(r.figures.get(Key.tokens_per_s), data.price_per_hour)),
            ("TPOT p50 ms", lambda r: r.figures.get(Key.tpot_ms_p50)),
            ("TTFT p50 ms", lambda r: r.figures.get(Key.ttft_ms_p50)),
            ("memory MiB", lambda r: r.figures.get(Key.peak_memory_bytes) and r.figures[Key.peak_memory_bytes] / 2**20),
            ("MBU", lambda r: r.figures.get(Key.mbu)),
            ("quality", lambda r: r.figures.get("quality")), ("why", lambda r: r.error or ", ".join(r.missed))]
    if data.price_per_hour is None:
        cols = [c for c in cols if not c[0].startswith("$")]
    head = "".join(f"<th onclick='sortTable({i})'>{c}</th>" for i, (c, _) in enumerate(cols))
    body = []
    for r in data.rows:
        cells = []
        for _, get in cols:
            v = get(r)
            text = f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))
            cells.append(f"<td data-v='{html.escape(text)}'>{html.escape(text)}</td>")
        cls = " class='chosen'" if r is data.chosen else ""
        body.append(f"<tr{cls} style='border-left:6px solid {STATUS_COLOURS[r.status]}'>{''.join(cells)}</tr>")
    return f"<table id='trials'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


SORT_JS = """
function sortTable(col) {
  const table = document.getElementById('trials'), body = table.tBodies[0];
  const rows = Array.from(body.rows), asc = table.dataset.col == col ? table.dataset.dir != 'asc' : true;
  rows.sort((a, b) => {
    const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
    const c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.col = col; table.dataset.dir = asc ? 'asc' : 'desc';
}
function copyRecipe() { navigator.clipboard && navigator.clipboard.writeText(document.getElementById('recipe').textContent); }
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } .sub { color: #666; margin-top: 0; }
.win { font-size: 18px; background: #eef6ee; padding: 10px 14px; border-radius: 6px; }
.bad { font-size: 18px; background: #fbeaea; padding: 10px 14px; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; } th { cursor: pointer; background: #f2f2f2; }
td, th { padding: 4px 8px; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
tr.chosen { background: #e8f0fa; font-weight: 600; } pre { background: #f7f7f7; padding: 10px; overflow: auto; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; } .card { border: 1px solid #ddd; border-radius: 6px; padding: 10px; }
"""


def render_html(data: ReportData) -> str:
    figs = [pareto_figure(data), speedup_figure(data), importance_figure(data)]
    divs = [f.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}", config={"displaylogo": False})
            for i, f in enumerate(figs)]
    t = data.target
    versions = ", ".join(f"{k} {v}" for k, v in t.get("versions", {}).items())
    workload = ", ".join(f"{k}={v}" for k, v in data.workload.items() if k != "prompts")
    recipe = json.dumps(data.document, indent=2) if data.document else "(nothing met the budget)"
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>autotune: {html.escape(data.study)}</title>
<style>{CSS}</style><script>{SORT_JS}</script></head><body>
<h1>autotune report — {html.escape(data.model)}</h1>
<p class='sub'>study {html.escape(data.study)} · budget {html.escape(data.budget.text)} · objective {html.escape(data.objective)}</p>
{headline(data)}
{divs[0]}
<div class='grid'><div class='card'>{divs[1]}</div><div class='card'>{divs[2]}</div></div>
<h2>All trials</h2><p class='sub'>click a column to sort</p>{trials_table(data)}
<h2>Target and workload</h2><div class='grid'>
<div class='card'><b>{html.escape(str(t.get('name')))}</b> ({html.escape(str(t.get('device')))}, {int(t.get('memory_bytes', 0)) / 2**30:.0f} GiB, {t.get('threads')} threads)<br>{html.escape(versions)}</div>
<div class='card'>{html.escape(workload)}</div></div>
<h2>The chosen recipe <button onclick='copyRecipe()'>copy</button></h2>
<p class='sub'>save as recipe.json and apply with <code>autotune.load("recipe.json")</code></p>
<pre id='recipe'>{html.escape(recipe)}</pre>
</body></html>"""


def render_png(data: ReportData, path: str) -> None:
    """A static Pareto picture (matplotlib) to paste into a chat or a pull request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for status, colour in STATUS_COLOURS.items():
        group = [r for r in data.rows if r.status == status and r.figures.get(Key.tpot_ms_p50) is not None]
        if group:
            ax.scatter([r.figures[Key.peak_memory_bytes] / 2**20 for r in group],
                       [r.figures[Key.tpot_ms_p50] for r in group], c=colour, label=f"{status} ({len(group)})", s=40)
    failed = [r for r in data.rows if r.figures.get(Key.tpot_ms_p50) is None]
    if failed:
        ax.scatter([], [], marker="x", c="#d73027", label=f"failed / pruned ({len(failed)})")
    if data.chosen is not None and data.chosen.figures.get(Key.tpot_ms_p50) is not None:
        ax.scatter([data.chosen.figures[Key.peak_memory_bytes] / 2**20], [data.chosen.figures[Key.tpot_ms_p50]],
                   marker="*", s=300, c="#2166ac", label="chosen", edgecolors="white")
    for lim in data.budget.limits:
        if lim.key == Key.tpot_ms_p50:
            ax.axhline(lim.value, ls="--", c="#b2182b")
        if lim.key == Key.peak_memory_bytes:
            ax.axvline(lim.value / 2**20, ls="--", c="#b2182b")
    ax.set_xlabel("peak memory (MiB)")
    ax.set_ylabel("TPOT p50 (ms per token)")
    ax.set_title(f"{data.model}: {len(data.rows)} trials ({data.study})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
