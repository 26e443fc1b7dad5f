"""corral.jsonl: the one reader (line numbers, encodings, every bad line in one message) and the resumable writer."""

from __future__ import annotations

import json

import pytest

from corral import jsonl
from corral.errors import DataError, InvalidArgumentError


def ints(obj, n):
    if not isinstance(obj, dict) or not isinstance(obj.get("x"), int):
        raise ValueError("expected {\"x\": an integer}")
    return obj["x"]


def test_every_bad_line_is_named_once_whatever_broke_it(tmp_path):
    p = tmp_path / "d.jsonl"
    # a BOM on line 1 (Windows editors), a blank line, a CRLF line, a Latin-1 byte, bad JSON, a bad value
    p.write_bytes(b'\xef\xbb\xbf{"x": 1}\n\n{"x": 2}\r\n{"x": "caf\xe9"}\n{"x": \n{"x": "no"}\n{"x": 3}\n')
    with pytest.raises(DataError) as e:
        jsonl.read(p, ints, what="a file of x lines", fix="fix them or pass --skip")
    lines = str(e.value).splitlines()
    assert lines[0] == f"{p}: 3 bad line(s); fix them or pass --skip:"
    assert lines[1] == f"  {p}:4: not UTF-8 text (byte 11 is 0xe9); save the file as UTF-8"
    assert lines[2].startswith(f"  {p}:5: not valid JSON (Expecting value at column")
    assert lines[3] == f"  {p}:6: expected {{\"x\": an integer}}" and len(lines) == 4
    items, problems = jsonl.read(p, ints, what="x", skip_bad=True)
    assert items == [1, 2, 3] and [x.split(":")[1] for x in problems] == ["4", "5", "6"]


def test_the_list_is_capped_and_counted(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("nope\n" * (jsonl.SHOWN + 7))
    with pytest.raises(InvalidArgumentError) as e:
        jsonl.read(p, ints, what="x", error=InvalidArgumentError)
    lines = str(e.value).splitlines()
    assert len(lines) == 1 + jsonl.SHOWN + 1 and lines[-1] == "  ... and 7 more"
    assert lines[0].startswith(f"{p}: {jsonl.SHOWN + 7} bad line(s)")


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"none\.jsonl: no such file; pass a file of x lines"):
        jsonl.read(tmp_path / "none.jsonl", ints, what="a file of x lines")
    with pytest.raises(DataError, match="is not a file; pass"):
        jsonl.read(tmp_path, ints, what="x")
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"e\.jsonl: no usable lines"):
        jsonl.read(tmp_path / "e.jsonl", ints, what="x")
    assert jsonl.read(tmp_path / "e.jsonl", ints, what="x", allow_empty=True) == ([], [])


def test_resume_cuts_a_partial_line_and_refuses_other_files(tmp_path):
    p = tmp_path / "out.jsonl"
    with jsonl.Appender(p) as w:
        w.write({"id": 1, "text": "é"})
        w.write({"id": 2})
    p.write_bytes(p.read_bytes() + b'{"id": 3, "te')  # a run killed mid-line
    ours = lambda r: isinstance(r, dict) and "id" in r
    assert [r["id"] for r in jsonl.resume(p, ours, "corral x", "pass another --out")] == [1, 2]
    assert p.read_text(encoding="utf-8").endswith('{"id": 2}\n')  # the partial line is gone
    with jsonl.Appender(p) as w:
        w.write({"id": 3})
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == [1, 2, 3]
    other = tmp_path / "notes.jsonl"
    other.write_text('{"id": 1}\n{"note": "mine"}\npartial')
    with pytest.raises(DataError, match=r"notes\.jsonl:2: not a line corral x wrote, so this file cannot be "
                                        r"resumed; pass another --out"):
        jsonl.resume(other, ours, "corral x", "pass another --out")
    assert other.read_text().endswith("partial")  # a file that is not ours is left as it was
    assert jsonl.resume(tmp_path / "new.jsonl", ours, "corral x", "") == []
