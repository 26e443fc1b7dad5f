"""The red-team report: a console table, report.json, samples.jsonl, report.png and report.html.

report.json:
    {"corral_version", "created", "label", "target", "judge", "limit", "seconds",
     "summary": {"attacks", "benign", "errors", "attack_success_rate", "attack_successes", "attack_refusal_rate",
                 "attack_block_rate", "false_refusal_rate", "false_refusals"},
     "by_category": {code: {"n", "hits", "rate", "refused", "blocked"}},   # rate: attack success rate
     "by_wrapper":  {wrapper: {...}},
     "by_benign_kind": {kind: {"n", "hits", "rate"}},                     # rate: false-refusal rate
     "compare": [{"label", "summary", "by_category", "by_wrapper", "by_benign_kind"}, ...]}
`compare` holds the earlier runs named by `--compare` (e.g. the same model without shields); the table, chart
and page show them beside this run. samples.jsonl holds one line per prompt: the reply, blocked / refused, the
judge's verdict and the outcome.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from corral.errors import InvalidArgumentError

RUN_KEYS = ("label", "summary", "by_category", "by_wrapper", "by_benign_kind")


def read_compare(path: str | Path) -> dict[str, Any]:
    """An earlier run's report.json (or its folder), for `--compare`."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise InvalidArgumentError(f"--compare {path}: no such report (a corral redteam report.json or its folder)")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"--compare {p}: not a JSON report ({e})") from None
    if not isinstance(d, dict) or any(k not in d for k in RUN_KEYS):
        raise InvalidArgumentError(f"--compare {p}: not a corral redteam report (it lacks "
                                   f"{', '.join(k for k in RUN_KEYS if k not in (d if isinstance(d, dict) else {}))})")
    return {k: d[k] for k in RUN_KEYS}


def runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    """This run and the compared ones, this run first."""
    return [{k: report[k] for k in RUN_KEYS}, *report.get("compare", [])]


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def print_table(report: dict[str, Any], console: Any = None) -> None:
    """Attack success per category and per wrapper, false refusals, one column per run."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rs = runs(report)
    table = Table(title="corral redteam" + (f" (--limit {report['limit']})" if report.get("limit") else ""))
    table.add_column("")
    table.add_column("n", justify="right")
    for r in rs:
        table.add_column(escape(r["label"]), justify="right")
    s0 = report["summary"]
    table.add_row("[bold]attack success rate[/bold]", str(sum(v["n"] for v in report["by_category"].values())),
                  *[f"[bold]{pct(r['summary']['attack_success_rate'])}[/bold]" for r in rs])
    table.add_row("attacks refused or blocked", "", *[pct(r["summary"]["attack_refusal_rate"]) for r in rs])
    table.add_row("attacks blocked by a shield", "", *[pct(r["summary"]["attack_block_rate"]) for r in rs])
    table.add_row("[bold]false-refusal rate[/bold]", str(s0["benign"]),
                  *[f"[bold]{pct(r['summary']['false_refusal_rate'])}[/bold]" for r in rs])
    for key, title in (("by_benign_kind", "  false refusals"), ("by_category", "  attack success"),
                       ("by_wrapper", "  attack success")):
        names = list(report[key])
        for r in rs[1:]:
            names += [n for n in r[key] if n not in names]
        for n in names:
            first = report[key].get(n, {})
            table.add_row(f"{title}: {escape(n)}", str(first.get("n", "")),
                          *[pct(r[key].get(n, {}).get("rate")) for r in rs], style="dim" if key != "by_wrapper"
                          else None)
    if s0["errors"]:
        table.add_row("errors (left out)", str(s0["errors"]), *["" for _ in rs])
    (console or Console()).print(table)


def write_report(report: dict[str, Any], samples: list[dict[str, Any]], out: str | Path) -> Path:
    """report.json, samples.jsonl, report.png and report.html in `out` (created); returns `out`."""
    from corral.eval.report import write_report_files

    return write_report_files(out, report, samples, plot, render_html(report, samples))


def plot(report: dict[str, Any], png: Path) -> None:
    """Three panels: attack success by category, by wrapper, and the overall rates; a bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = runs(report)
    panels = [("attack success by category", "by_category"), ("attack success by wrapper", "by_wrapper"),
              ("overall", None)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [3, 1.6, 1.2]})
    width = 0.8 / len(rs)
    for ax, (title, key) in zip(axes, panels, strict=True):
        if key is None:
            names = ["attack success", "false refusal"]
            vals = [[r["summary"]["attack_success_rate"], r["summary"]["false_refusal_rate"]] for r in rs]
        else:
            names = list(report[key])
            for r in rs[1:]:
                names += [n for n in r[key] if n not in names]
            vals = [[r[key].get(n, {}).get("rate") for n in names] for r in rs]
        for j, (r, v) in enumerate(zip(rs, vals, strict=True)):
            xs = [i + (j - (len(rs) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, [100 * (x or 0.0) for x in v], width, label=r["label"])
        tilt = len(names) > 6 or max((len(n) for n in names), default=0) > 9
        ax.set_xticks(range(len(names)), names, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                      fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(rs), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(png, dpi=100)
    plt.close(fig)


def render_html(report: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """A self-contained page: the rates of every run, the chart, and the successful attacks and false refusals."""
    e = html.escape
    rs = runs(report)
    head = "".join(f"<th>{e(r['label'])}</th>" for r in rs)

    def row(name: str, cells: list[str], bold: bool = False) -> str:
        tag = "th" if bold else "td"
        return f"<tr><th>{e(name)}</th>{''.join(f'<{tag}>{e(c)}</{tag}>' for c in cells)}</tr>"

    rows = [row("attack success rate", [pct(r["summary"]["attack_success_rate"]) for r in rs], True),
            row("attacks refused or blocked", [pct(r["summary"]["attack_refusal_rate"]) for r in rs]),
            row("attacks blocked by a shield", [pct(r["summary"]["attack_block_rate"]) for r in rs]),
            row("false-refusal rate", [pct(r["summary"]["false_refusal_rate"]) for r in rs], True)]
    for key, title in (("by_benign_kind", "false refusals"), ("by_category", "attack success"),
                       ("by_wrapper", "attack success")):
        names = list(report[key])
        for r in rs[1:]:
            names += [n for n in r[key] if n not in names]
        rows += [row(f"{title}: {n}", [pct(r[key].get(n, {}).get("rate")) for r in rs]) for n in names]
    worst = [s for s in samples if s.get("success")][:50]
    fr = [s for s in samples if s.get("false_refusal")][:50]

    def listing(items: list[dict[str, Any]]) -> str:
        if not items:
            return "<p>none</p>"
        return "<ul>" + "".join(f"<li><b>{e(s['id'])}</b> <small>{e(s.get('category') or s['kind'])} "
                                f"{e(s.get('wrapper') or '')}</small><br><code>{e(s['reply'][:400])}</code></li>"
                                for s in items) + "</ul>"

    t, j = report["target"], report["judge"]
    target = ", ".join(f"{k}: {v}" for k, v in t.items() if v not in (None, "", []))
    judge = ", ".join(f"{k}: {v}" for k, v in j.items() if v not in (None, "")) if j else \
        "none (every answer to an attack counts as a success: the compliance rate)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>corral redteam report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
tr > th:first-child {{ text-align: left; font-weight: normal; }}
code {{ white-space: pre-wrap; font-size: 85%; color: #444; }}
small {{ color: #666; }}
</style></head><body>
<h1>corral redteam: {e(report['label'])}</h1>
<p>{e(report['created'])}, corral {e(report['corral_version'])}; target {e(target)}; judge {e(judge)};
{report['summary']['attacks']} attacks, {report['summary']['benign']} benign prompts,
{report['summary']['errors']} errors{e(f", --limit {report['limit']}" if report.get('limit') else '')}</p>
<table><tr><th></th>{head}</tr>{''.join(rows)}</table>
<p><img src="report.png" alt="the same numbers as a chart" style="max-width:100%"></p>
<h2>Successful attacks <small>(this run; first 50)</small></h2>{listing(worst)}
<h2>False refusals <small>(this run; first 50)</small></h2>{listing(fr)}
</body></html>
"""
