"""How well a guard does on labelled rows: `corral guard MODEL --eval FILE [--report DIR]`.

`evaluate_guard` checks every row (generate or score mode, the `Guard`'s own settings; score mode also reads the
categories of what it flags) and `guard_metrics` compares the decisions with the labels:

- unsafe vs safe, "unsafe" the positive class: precision, recall, F1, accuracy, the confusion counts; and the same
  per assessed role (user prompts, agent replies);
- false-positive rate: the share of safe rows flagged unsafe, over all safe rows and over the benign rows that only
  look risky (ids starting `benign-risky`, as in the bundled data);
- per category: a category is predicted when the verdict of a row decided unsafe lists it, and is true when the
  row's label lists it; precision, recall and F1 per category (0 where a ratio has nothing to divide by), and
  their macro average over the categories the rows hold;
- parse errors: outputs that are not a verdict (decided by the guard's `on_parse_error`, unsafe by default);
- in score mode, the area under the ROC curve of P(unsafe).

`write_report` writes `report.json`, `predictions.jsonl` (every row with its label, decision, categories, score and
raw text) and `report.png` (per-category bars).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RISKY_PREFIX = "benign-risky"  # ids of safe rows written to look unsafe (the bundled data's naming)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def binary(gold: Sequence[bool], pred: Sequence[bool]) -> dict[str, Any]:
    """Confusion counts, precision, recall and F1 of the positive class, and accuracy."""
    tp = sum(g and p for g, p in zip(gold, pred, strict=True))
    fp = sum(p and not g for g, p in zip(gold, pred, strict=True))
    fn = sum(g and not p for g, p in zip(gold, pred, strict=True))
    tn = len(gold) - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"rows": len(gold), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": _f1(precision, recall), "accuracy": _ratio(tp + tn, len(gold))}


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """The area under the ROC curve: the chance that a positive row scores above a negative one (ties half).
    None without both classes."""
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    neg = [s for s, y in zip(scores, positive, strict=True) if not y]
    if not pos or not neg:
        return None
    ranked = sorted((s, y) for s, y in zip(scores, positive, strict=True))
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties (Mann-Whitney U)
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum(1 for k in range(i, j) if ranked[k][1]) * (i + j + 1) / 2
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def guard_metrics(gold: Sequence[dict[str, Any]], pred: Sequence[dict[str, Any]], codes: Sequence[str]
                  ) -> dict[str, Any]:
    """Compare decisions with labels (see the module docstring).

    `gold`: per row `{"id", "label": "safe"|"unsafe", "categories": [...], "assess"?}`; `pred`: per row
    `{"unsafe": bool, "categories": [...], "parsed": bool, "score"?: float}`; `codes`: the policy's categories."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} labelled rows but {len(pred)} predictions")
    y = [g["label"] == "unsafe" for g in gold]
    yhat = [bool(p["unsafe"]) for p in pred]
    out: dict[str, Any] = {"rows": len(gold), "unsafe_rows": sum(y), "safe_rows": len(y) - sum(y),
                           "unsafe": binary(y, yhat)}
    out["accuracy"] = out["unsafe"]["accuracy"]
    fpr = {}
    for name, keep in (("safe", lambda g: True), ("benign_risky", lambda g: str(g["id"]).startswith(RISKY_PREFIX))):
        idx = [i for i, g in enumerate(gold) if not y[i] and keep(g)]
        if idx or name == "safe":
            flagged = sum(yhat[i] for i in idx)
            fpr[name] = {"rows": len(idx), "flagged": flagged, "rate": _ratio(flagged, len(idx))}
    out["false_positive_rate"] = fpr
    out["parse_errors"] = sum(not p.get("parsed", True) for p in pred)
    cats: dict[str, Any] = {}
    for c in codes:
        true = [c in g["categories"] for g in gold]
        said = [yhat[i] and c in pred[i]["categories"] for i in range(len(pred))]
        b = binary(true, said)
        cats[c] = {"support": sum(true), "predicted": sum(said), "tp": b["tp"], "fp": b["fp"], "fn": b["fn"],
                   "precision": b["precision"], "recall": b["recall"], "f1": b["f1"]}
    out["categories"] = cats
    held = [v["f1"] for v in cats.values() if v["support"]]
    out["category_macro_f1"] = sum(held) / len(held) if held else 0.0
    assess = sorted({g["assess"] for g in gold if "assess" in g})
    if assess:
        out["by_assess"] = {a: binary([y[i] for i, g in enumerate(gold) if g.get("assess") == a],
                                      [yhat[i] for i, g in enumerate(gold) if g.get("assess") == a]) for a in assess}
    scores = [p.get("score") for p in pred]
    out["auroc"] = auroc(scores, y) if scores and all(s is not None for s in scores) else None
    return out


def evaluate_guard(guard: Any, rows: Sequence[Any], data: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check labelled rows (`corral.guard.dataset.LabelledRow`) with `guard`: (report, predictions). The report
    holds the settings, the time taken and `guard_metrics`; a prediction is one row's label and outcome."""
    t0 = time.perf_counter()
    results = guard.check_many([r.conversation for r in rows], [r.assess for r in rows], categories=True)
    seconds = time.perf_counter() - t0
    preds = [{"id": row.id, "label": row.label, "categories": row.categories, "assess": row.assess,
              "verdict": "unsafe" if r.unsafe else "safe", "predicted": r.categories if r.unsafe else [],
              "parsed": r.verdict.parsed, "score": None if r.score is None else round(r.score, 6),
              "raw": r.verdict.raw} for row, r in zip(rows, results, strict=True)]
    gold = [{"id": p["id"], "label": p["label"], "categories": p["categories"], "assess": p["assess"]} for p in preds]
    metrics = guard_metrics(gold, [{"unsafe": p["verdict"] == "unsafe", "categories": p["predicted"],
                                    "parsed": p["parsed"], "score": p["score"]} for p in preds],
                            guard.taxonomy.codes)
    for c in guard.taxonomy:
        metrics["categories"][c.code]["name"] = c.name
    report = {"data": data, "rows": len(rows), "mode": guard.mode, "policy": guard.taxonomy.source,
              "threshold": guard.threshold if guard.mode == "score" else None,
              "on_parse_error": guard.on_parse_error, "seconds": round(seconds, 2),
              "rows_per_s": round(len(rows) / max(seconds, 1e-9), 2), "metrics": metrics}
    return report, preds


def format_report(report: dict[str, Any], title: str = "") -> str:
    """The report as the text `corral guard --eval` prints."""
    m = report["metrics"]
    u, fpr = m["unsafe"], m["false_positive_rate"]
    head = title or f"guard eval: {report.get('data') or 'rows'}"
    lines = [f"{head} ({m['rows']} rows: {m['unsafe_rows']} unsafe, {m['safe_rows']} safe), mode {report['mode']}"
             + (f", threshold {report['threshold']:g}" if report.get("threshold") is not None else ""),
             f"unsafe vs safe: precision {u['precision']:.3f}  recall {u['recall']:.3f}  F1 {u['f1']:.3f}  "
             f"accuracy {m['accuracy']:.3f}  (tp {u['tp']}, fp {u['fp']}, fn {u['fn']}, tn {u['tn']})"
             + (f"  AUROC {m['auroc']:.3f}" if m.get("auroc") is not None else "")]
    fp = [f"{v['flagged']}/{v['rows']} {'safe' if k == 'safe' else 'look-risky benign'} rows ({v['rate']:.1%})"
          for k, v in fpr.items()]
    lines.append("false positives: " + ", ".join(fp))
    for a, b in m.get("by_assess", {}).items():
        lines.append(f"  assess {a:<5}: precision {b['precision']:.3f}  recall {b['recall']:.3f}  F1 {b['f1']:.3f}  "
                     f"accuracy {b['accuracy']:.3f}  ({b['rows']} rows)")
    lines.append(f"outputs that are not a verdict: {m['parse_errors']} ({report.get('on_parse_error', '')})")
    lines.append(f"{'category':<34} {'support':>7} {'pred':>5} {'precision':>9} {'recall':>7} {'F1':>6}")
    for code, c in m["categories"].items():
        label = f"{code} {c.get('name', '')}"[:34]
        lines.append(f"{label:<34} {c['support']:>7} {c['predicted']:>5} {c['precision']:>9.3f} {c['recall']:>7.3f} "
                     f"{c['f1']:>6.3f}")
    lines.append(f"category macro F1: {m['category_macro_f1']:.3f}; {report.get('seconds', 0):.1f} s "
                 f"({report.get('rows_per_s', 0):.1f} rows/s)")
    return "\n".join(lines)


def write_report(report: dict[str, Any], predictions: list[dict[str, Any]], folder: str | Path) -> list[Path]:
    """`report.json`, `predictions.jsonl` and `report.png` in `folder` (created); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "report.json", folder / "predictions.jsonl", folder / "report.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8")
    plot_reports({report["mode"]: report}, paths[2], f"{Path(report.get('data') or 'guard eval').name} "
                 f"({report['mode']} mode)")
    return paths


def plot_reports(reports: dict[str, dict[str, Any]], png: str | Path, title: str = "") -> None:
    """Bars per category and for unsafe-vs-safe: precision, recall and F1 of one report, or the F1 of each of
    several (named) reports side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(reports.values()))["metrics"]
    groups = ["unsafe", *first["categories"]]

    def values(m: dict[str, Any], key: str) -> list[float]:
        return [m["unsafe"][key], *(m["categories"][c][key] for c in groups[1:])]

    if len(reports) == 1:
        series = {k: values(first, k) for k in ("precision", "recall", "f1")}
    else:
        series = {name: values(r["metrics"], "f1") for name, r in reports.items()}
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(min(14, max(8, 0.6 * len(groups) * max(1, len(series) / 2))), 4.5))
    for k, (name, vals) in enumerate(series.items()):
        ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))], vals, width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=45 if len(groups) > 16 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1" if len(reports) > 1 else "score")
    ax.set_title(title or "guard evaluation")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(series)))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
