"""The evaluation report: a console table, report.json, samples.jsonl, a PNG chart and an HTML page.

report.json:
    {"corral_version", "created", "limit",
     "tasks":   {task: {"kind", "source", "description", "examples", "metrics", "lower_is_better", "chat"}},
     "models":  {model: {"source"}},
     "results": {model: {task: {metric: value, ..., "n": examples scored, "seconds": wall time}}}}
The first name in a task's `metrics` is its headline metric (the one charted). samples.jsonl holds one line per model,
task and example: the prompt, the reply or the log-likelihoods, and each scorer's verdict.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

PERCENT = ("acc", "acc_norm", "checks_acc")


def fmt(metric: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if metric in PERCENT:
        return f"{100 * v:.1f}%"
    return f"{v:.2f}" if metric == "ppl" else f"{v:.3f}"


def columns(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(task, metric) pairs in report order."""
    return [(t, m) for t, info in report["tasks"].items() for m in info["metrics"]]


def _best(report: dict[str, Any], task: str, metric: str) -> float | None:
    vals = [r[task].get(metric) for r in report["results"].values() if task in r]
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if len(vals) < 2:
        return None
    return min(vals) if report["tasks"][task]["lower_is_better"] else max(vals)


def print_table(report: dict[str, Any], console: Any = None) -> None:
    """One row per task metric, one column per model (narrow terminals fit a few models); the best in bold."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    limit = report["limit"]
    table = Table(title="corral eval" + (f" (first {limit} examples of each task)" if limit else ""))
    table.add_column("task")
    table.add_column("metric")
    table.add_column("n", justify="right")
    models = list(report["results"])
    for name in models:
        table.add_column(escape(name), justify="right")
    for t, m in columns(report):
        info = report["tasks"][t]
        cells = []
        for name in models:
            v = report["results"][name].get(t, {}).get(m)
            text = fmt(m, v)
            cells.append(f"[bold]{text}[/bold]" if v is not None and v == _best(report, t, m) else text)
        first = m == info["metrics"][0]
        table.add_row(escape(t) if first else "", f"{m} {'↓' if info['lower_is_better'] else '↑'}",
                      str(info["examples"]) if first else "", *cells)
    table.add_row("time", "", "", *[f"{sum(r.get('seconds', 0) for r in report['results'][n].values()):.0f} s"
                                    for n in models], style="dim")
    (console or Console()).print(table)


def write_report(report: dict[str, Any], samples: list[dict[str, Any]], out: str | Path) -> Path:
    """report.json, samples.jsonl, report.png and report.html in `out` (created); returns `out`."""
    return write_report_files(out, report, samples, plot, render_html(report))


def write_report_files(out: str | Path, report: dict[str, Any], samples: list[dict[str, Any]],
                       plot_png: Callable[[dict[str, Any], Path], Any], html: str) -> Path:
    """The files every corral report is made of (eval, redteam): report.json, samples.jsonl, report.png drawn by
    `plot_png(report, path)` and report.html, in `out` (created); returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    plot_png(report, out / "report.png")
    (out / "report.html").write_text(html, encoding="utf-8")
    return out


def plot(report: dict[str, Any], png: Path) -> None:
    """One panel per task: its headline metric, a bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"])
    models = list(report["results"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 3.2 * len(tasks)), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, t in zip(axes[0], tasks, strict=True):
        info = report["tasks"][t]
        m = info["metrics"][0]
        vals = [report["results"][name].get(t, {}).get(m, math.nan) for name in models]
        shown = [100 * v if m in PERCENT else v for v in vals]
        bars = ax.bar(range(len(models)), shown, color=[colors[i % len(colors)] for i in range(len(models))])
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(fmt(m, v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8)
        ax.set_title(f"{t}\n{m} ({'lower' if info['lower_is_better'] else 'higher'} is better)", fontsize=9)
        ax.set_xticks(range(len(models)), [_short(n) for n in models], rotation=20, ha="right", fontsize=8)
        if m in PERCENT:
            ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: the table, a bar chart per task (CSS), and report.png."""
    e = html.escape
    models = list(report["results"])
    head = "".join(f"<th>{e(t)}<br><small>{e(m)} {'↓' if report['tasks'][t]['lower_is_better'] else '↑'}"
                   f"</small></th>" for t, m in columns(report))
    rows = []
    for name in models:
        cells = []
        for t, m in columns(report):
            v = report["results"][name].get(t, {}).get(m)
            best = v is not None and v == _best(report, t, m)
            cells.append(f"<td class=\"{'best' if best else ''}\">{e(fmt(m, v))}</td>")
        rows.append(f"<tr><th>{e(name)}</th>{''.join(cells)}</tr>")
    charts = []
    for t, info in report["tasks"].items():
        m = info["metrics"][0]
        vals = {name: report["results"][name].get(t, {}).get(m) for name in models}
        finite = [v for v in vals.values() if v is not None and not math.isnan(v)]
        top = 1.0 if m in PERCENT else max(finite, default=1.0) or 1.0
        bars = "".join(
            f"<div class=\"bar\"><span class=\"label\">{e(name)}</span><span class=\"track\"><span class=\"fill\" "
            f"style=\"width:{0 if v is None or math.isnan(v) else max(0.0, min(100.0, 100 * v / top)):.1f}%\">"
            f"</span></span><span class=\"value\">{e(fmt(m, v))}</span></div>"
            for name, v in vals.items())
        desc = f"<p>{e(info['description'])}</p>" if info["description"] else ""
        charts.append(f"<section><h3>{e(t)} <small>{e(m)}, {'lower' if info['lower_is_better'] else 'higher'} is "
                      f"better; {info['examples']} examples, {e(info['kind'])}</small></h3>{desc}{bars}</section>")
    limit = f" (first {report['limit']} examples of each task)" if report["limit"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>corral eval report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
tr > th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #eef6ee; }}
.bar {{ display: flex; align-items: center; gap: 8px; margin: 3px 0; }}
.label {{ width: 220px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.track {{ flex: 1; background: #eee; height: 16px; max-width: 500px; }}
.fill {{ display: block; height: 100%; background: #4a7fb5; }}
.value {{ width: 70px; text-align: right; font-variant-numeric: tabular-nums; }}
small {{ color: #666; font-weight: normal; }}
</style></head><body>
<h1>corral eval</h1>
<p>{e(report['created'])}, corral {e(report['corral_version'])}{e(limit)}</p>
<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>
{''.join(charts)}
<p><img src="report.png" alt="the same numbers as a chart"></p>
</body></html>
"""
