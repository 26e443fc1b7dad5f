"""Assertions several test modules share."""

from __future__ import annotations


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    """A user's error as the CLI prints it: exit 2, no traceback, one "corral: error: ..." line, then at most an
    indented list (a file's bad lines, `corral.jsonl`); every needle somewhere in it."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("corral: error:"), err
    assert all(ln.startswith("  ") for ln in lines[1:]), err
    for n in needles:
        assert n in err, (n, err)
