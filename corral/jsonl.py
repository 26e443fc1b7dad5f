"""JSON Lines in and out: the one reader every input file goes through, and the one appender every resumable output
goes through. Owns nothing else; imports only `corral.errors`.

Reading (`read`): lines are numbered from 1 and blank ones skipped; each line is decoded on its own (a line that is
not UTF-8, or a byte-order mark, never hides the lines after it); each object goes through the caller's `parse`,
whose `ValueError` or `CorralError` is that line's problem. Every bad line is reported at once, in one shape:

    data.jsonl: 3 bad line(s); fix them or pass --skip-bad-lines:
      data.jsonl:2: not valid JSON (Expecting value at column 9)
      data.jsonl:5: ...

(the first `SHOWN`, then "... and N more"), raised as the caller's error class, or handed back with `skip_bad`.

Writing (`Appender`): each record goes down in one system call, so a killed run leaves whole lines; `resume` reads
what an earlier run wrote, cutting off a partial last line, so a rerun skips the work already done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from corral.errors import CorralError, DataError

T = TypeVar("T")
SHOWN = 20  # bad lines listed in one error; the rest are counted


def objects(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, the line's JSON value) for each non-blank line; a line that is not UTF-8 or not JSON gives a
    `ValueError` in place of its value (with a message fit for the user), so one bad line never hides the rest."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield n, ValueError(f"not UTF-8 text (byte {e.start + 1} is 0x{raw[e.start]:02x}); save the file "
                                    "as UTF-8")
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, ValueError(f"not valid JSON ({e.msg} at column {e.colno})")


def read(path: str | Path, parse: Callable[[Any, int], T | None], *, what: str,
         error: type[CorralError] = DataError, fix: str = "fix them", skip_bad: bool = False,
         allow_empty: bool = False) -> tuple[list[T], list[str]]:
    """(items, problems): `parse(value, line)` of every line of `path`, Nones left out. `what` names the file's
    kind for "no such file; pass `what`". Bad lines raise one `error` listing them (see the module docstring),
    unless `skip_bad`: then they come back as problems ("PATH:LINE: message"). No item at all raises too, unless
    `allow_empty`."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such file; pass {what}" if not p.exists() else f"{p} is not a file; pass {what}")
    items: list[T] = []
    problems: list[str] = []
    for n, value in objects(p):
        try:
            if isinstance(value, ValueError):
                raise value
            item = parse(value, n)
        except (ValueError, CorralError) as e:
            problems.append(f"{p}:{n}: {e}")
            continue
        if item is not None:
            items.append(item)
    if problems and not skip_bad:
        raise error(bad_lines(p, problems, fix))
    if not items and not allow_empty:
        raise error(f"{p}: no usable lines; pass {what}")
    return items, problems


def bad_lines(path: str | Path, problems: list[str], fix: str = "fix them") -> str:
    """The one message shape for a file's bad lines: the count, how to fix, the first `SHOWN` problems."""
    shown = "".join(f"\n  {x}" for x in problems[:SHOWN])
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return f"{path}: {len(problems)} bad line(s); {fix}:{shown}{more}"


def records(path: str | Path) -> list[Any]:
    """Every line of a JSONL file corral wrote itself (metrics, a run's augmentation files), [] if there is none;
    input from users goes through `read`, which checks it."""
    p = Path(path)
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] if p.exists() else []


def resume(path: str | Path, ours: Callable[[Any], bool], writer: str, hint: str,
           error: type[CorralError] = DataError) -> list[Any]:
    """The records an earlier run appended to `path` ([] if none), after cutting off a partial last line (a run
    killed mid-write). A line `ours` rejects means the file is not the output of `writer` ("corral synth"): `error`
    names the line and says `hint` (how to fix: "pass another --out"), and the file is left as it is."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for n, raw in enumerate(data[:end].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        if rec is None or not ours(rec):
            raise error(f"{p}:{n}: not a line {writer} wrote, so this file cannot be resumed; {hint}")
        records.append(rec)
    if end < len(data):
        os.truncate(p, end)
    return records


class Appender:
    """A JSONL file opened for appending (created with its folder if need be); `write` puts each record down in
    one system call, so a kill leaves whole lines."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
