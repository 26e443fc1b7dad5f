"""Measuring a guard: the metrics against a hand-computed table, and `corral guard --eval` on a tiny model in both
modes (report.json, predictions.jsonl, report.png) with its error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.guard.dataset import BUNDLED
from corral.guard.evaluate import auroc, guard_metrics
from tests.helpers import assert_clean_error


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- metrics ----------------------------------------------------------------------------------------------------


def test_guard_metrics_against_a_hand_computed_table():
    U, S = "unsafe", "safe"
    gold = [  # id, label, categories, assess
        ("s1-a", U, ["S1"], "user"), ("s1-b", U, ["S1", "S2"], "user"), ("s2-a", U, ["S2"], "user"),
        ("s3-a", U, ["S3"], "agent"), ("benign-risky-1", S, [], "user"), ("benign-risky-2", S, [], "user"),
        ("benign-1", S, [], "user"), ("agent-benign-1", S, [], "agent"), ("benign-2", S, [], "user"),
    ]
    pred = [  # unsafe, categories, parsed, score
        (True, ["S1"], True, 0.9), (True, ["S2"], True, 0.8), (False, [], True, 0.4),
        (True, [], False, 0.7),  # a parse error decided unsafe (fail_closed): no categories
        (True, ["S1"], True, 0.6), (False, [], True, 0.3), (False, [], True, 0.1),
        (True, ["S3"], True, 0.8), (False, ["S2"], True, 0.2),  # a category on a safe decision does not count
    ]
    m = guard_metrics([{"id": i, "label": lb, "categories": c, "assess": a} for i, lb, c, a in gold],
                      [{"unsafe": u, "categories": c, "parsed": p, "score": s} for u, c, p, s in pred],
                      ["S1", "S2", "S3", "S4"])
    # unsafe vs safe: tp 3 (s1-a, s1-b, s3-a), fn 1 (s2-a), fp 2 (benign-risky-1, agent-benign-1), tn 3
    assert {k: m["unsafe"][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 3, "fp": 2, "fn": 1, "tn": 3}
    assert m["unsafe"]["precision"] == pytest.approx(3 / 5) and m["unsafe"]["recall"] == pytest.approx(3 / 4)
    assert m["unsafe"]["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35) and m["accuracy"] == pytest.approx(6 / 9)
    assert m["false_positive_rate"] == {"safe": {"rows": 5, "flagged": 2, "rate": 0.4},
                                        "benign_risky": {"rows": 2, "flagged": 1, "rate": 0.5}}
    assert m["parse_errors"] == 1 and (m["rows"], m["unsafe_rows"], m["safe_rows"]) == (9, 4, 5)
    c = m["categories"]
    # S1: true on s1-a, s1-b; said on s1-a, benign-risky-1 → tp 1, fp 1, fn 1
    assert (c["S1"]["support"], c["S1"]["predicted"], c["S1"]["tp"], c["S1"]["fp"], c["S1"]["fn"]) == (2, 2, 1, 1, 1)
    assert c["S1"]["precision"] == c["S1"]["recall"] == c["S1"]["f1"] == pytest.approx(0.5)
    # S2: true on s1-b, s2-a; said on s1-b (benign-2's S2 came with a safe decision) → P 1, R 0.5
    assert (c["S2"]["precision"], c["S2"]["recall"]) == (1.0, 0.5) and c["S2"]["f1"] == pytest.approx(2 / 3)
    # S3: true on s3-a (its verdict was not parsed), said on agent-benign-1 → all 0
    assert (c["S3"]["tp"], c["S3"]["fp"], c["S3"]["fn"], c["S3"]["f1"]) == (0, 1, 1, 0.0)
    assert c["S4"] == {"support": 0, "predicted": 0, "tp": 0, "fp": 0, "fn": 0, "precision": 0.0, "recall": 0.0,
                       "f1": 0.0}
    assert m["category_macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)  # S4 has no rows: left out
    # user rows: tp 2, fn 1, fp 1, tn 3; agent rows: tp 1, fp 1
    user, agent = m["by_assess"]["user"], m["by_assess"]["agent"]
    assert (user["tp"], user["fn"], user["fp"], user["tn"], agent["tp"], agent["fp"]) == (2, 1, 1, 3, 1, 1)
    # scores: unsafe 0.9 0.8 0.4 0.7, safe 0.6 0.3 0.1 0.8 0.2; pairs won: 5+4.5+3+4 of 20 (0.8 vs 0.8 is half)
    assert m["auroc"] == pytest.approx(16.5 / 20)


def test_auroc_edges():
    assert auroc([0.1, 0.9], [False, True]) == 1.0 and auroc([0.9, 0.1], [False, True]) == 0.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5 and auroc([0.2, 0.3], [True, True]) is None


# --- on a tiny model -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_cli_eval(tiny_guard_dir, tmp_path, capsys, mode):
    from corral.cli import main

    rows = [json.loads(x) for x in BUNDLED["heldout"].read_text().splitlines()]
    pick = [r for r in rows if r["label"] == "unsafe"][:6] + [r for r in rows if r["id"].startswith("benign-r")][:3]
    pick += [r for r in rows if r["assess"] == "agent" and r["label"] == "safe"][:3]
    data = write_rows(tmp_path / "some.jsonl", pick)
    assert main(["guard", str(tiny_guard_dir), "--eval", str(data), "--mode", mode, "--max-tokens", "3",
                 "--report", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"some.jsonl (12 rows: 6 unsafe, 6 safe), mode {mode}" in out
    assert "/3 look-risky benign rows" in out and "S14 Code Interpreter Abuse" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    preds = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    m = report["metrics"]
    assert report["mode"] == mode and [p["id"] for p in preds] == [r["id"] for r in pick] and m["rows"] == 12
    assert m["parse_errors"] == sum(not p["parsed"] for p in preds)
    assert m["unsafe"]["tp"] + m["unsafe"]["fp"] == sum(p["verdict"] == "unsafe" for p in preds)
    assert m["false_positive_rate"]["benign_risky"]["rows"] == 3 and m["by_assess"]["agent"]["rows"] == 3
    if mode == "score":
        assert m["auroc"] is not None and all(0 <= p["score"] <= 1 for p in preds)
        # what score mode flags, it also asks the categories of (a generation after "unsafe\n")
        assert all(p["raw"].startswith("unsafe\n") for p in preds if p["verdict"] == "unsafe")
    else:
        assert m["auroc"] is None and all(p["score"] is None and p["raw"] for p in preds)


@pytest.mark.parametrize("args, needles", [
    (["guard", "{model}", "--eval", "{tmp}/bad.jsonl"],
     ["bad.jsonl: 2 bad line(s); fix them", "bad.jsonl:1: 'label' is 'maybe'", "bad.jsonl:2: category 'S99'"]),
    (["guard", "{model}", "--eval", "{tmp}/missing.jsonl"], ["missing.jsonl: no such file"]),
    (["guard", "{model}", "--text", "hi", "--report", "{tmp}/r"], ["--report goes with --eval"]),
    (["guard", "{model}", "--eval", "heldout", "--print-prompt"], ["--print-prompt shows one prompt"]),
])
def test_cli_eval_errors(tiny_guard_dir, tmp_path, capsys, args, needles):
    from corral.cli import main

    row = {"conversation": [{"role": "user", "content": "hi"}], "label": "maybe", "categories": []}
    write_rows(tmp_path / "bad.jsonl", [row, {**row, "label": "unsafe", "categories": ["S99"]}])
    code = main([a.replace("{tmp}", str(tmp_path)).replace("{model}", str(tiny_guard_dir)) for a in args])
    assert_clean_error(code, capsys.readouterr().err, *needles)
