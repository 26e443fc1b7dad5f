"""examples/tools (the Pedalwick tool-calling set): the committed files are exactly what make_dataset.py builds, its
own checks pass on them, and a larger draw (--scale 2) keeps the rules against the held-out eval set. No model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="examples/tools/check_sets.py validates calls with jsonschema")

HERE = Path(__file__).resolve().parents[1] / "examples" / "tools"
FILES = ("tools.json", "train.jsonl", "eval.jsonl")


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_committed_files_are_the_generators_output(tmp_path):
    run(str(HERE / "make_dataset.py"), "--out", str(tmp_path))
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (HERE / name).read_bytes(), \
            f"examples/tools/{name} is stale: run python examples/tools/make_dataset.py"
    assert "all checks passed" in run(str(HERE / "check_sets.py"))


def test_scaled_draw_keeps_the_rules(tmp_path):
    run(str(HERE / "make_dataset.py"), "--scale", "2", "--out", str(tmp_path))
    out = run(str(HERE / "check_sets.py"), str(tmp_path))
    assert "train.jsonl: 720 rows; simple 288, multiple 144, parallel 144, irrelevance 144" in out
    assert (tmp_path / "eval.jsonl").read_bytes() == (HERE / "eval.jsonl").read_bytes()
