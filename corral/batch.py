"""`corral batch`: offline inference over an OpenAI Batch API input file, through the continuous-batching engine.

Input: JSONL, one request a line, as OpenAI's Batch API takes it:
`{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`, where url is one of
`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`. The body's `model` may be left out or name anything:
the loaded model answers every line. Blank lines are skipped.

Output: JSONL in OpenAI's batch output format, one line per input line, in the order they complete (match them by
custom_id, as with OpenAI). A request the server would answer with an error (a bad temperature, `"stream": true`, a
prompt too long) gets `response.status_code` 4xx/5xx and an OpenAI error body, as the server would send. A line that
is not a request at all (not JSON, no or a repeated custom_id, another method or url) gets `"response": null` and
`"error": {"code", "message", "line"}`; `line` is the 1-based input line, as in the `errors` of OpenAI's Batch object.

Choices:
- The whole file is checked before anything runs, and each bad line is reported by number; bad lines do not stop
  the run.
- Every line runs concurrently against one `Service` (the server's request → engine → response code), so the engine
  batches them. What is in flight is bounded in engine sequences (a request with n=4 holds 4), at most 4 x
  max_batch and never more than the engine's queue takes.
- Each result is appended with a single `os.write` as soon as it completes, so a killed run leaves at most a partial
  last line. Rerunning with the same output file truncates that line, skips every line already answered (custom_id,
  or input line number for the lines that are not requests) and runs the rest. An answered error is not retried.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from corral import jsonl
from corral.engine.engine import QueueFullError
from corral.errors import CorralError, InvalidArgumentError
from corral.serve import protocol as P
from corral.serve.errors import ParamError
from corral.serve.service import Service

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_SHOWN_FAILURES = 10  # request errors echoed on the console; the rest are in the output file only


@dataclass
class Line:
    """One non-blank input line: a request, or (with `error` set) a line that is not one."""

    number: int  # 1-based line in the input file
    custom_id: str | None
    url: str = ""
    body: Any = None
    error: tuple[str, str] | None = None  # (code, message)

    @property
    def key(self) -> str | int:
        """What marks the line done in the output: its custom_id, or its number when it is not a request."""
        return self.number if self.error else self.custom_id


@dataclass
class BatchSummary:
    """Counts over the whole output file (`ok`, `failed`, `resumed`) and over this run (tokens, seconds)."""

    total: int  # request lines in the input
    resumed: int  # already answered in the output file before this run
    ok: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of this run."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        resumed = f" ({self.resumed} from an earlier run)" if self.resumed else ""
        return (f"batch: {self.ok} of {self.total} lines ok, {self.failed} failed{resumed}; "
                f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens in {self.seconds:.1f} s "
                f"({self.tokens_per_second:.1f} tokens/s)")


# --- files ------------------------------------------------------------------------------------------------------


def check_paths(in_path: str | Path, out_path: str | Path) -> None:
    """Raise `InvalidArgumentError` unless `in_path` is a readable file and `out_path` can be written or resumed."""
    src, dst = Path(in_path), Path(out_path)
    if not src.is_file():
        raise InvalidArgumentError(f"{src}: no such file (the batch input, JSONL)" if not src.exists() else
                                   f"{src} is not a file; pass the batch input JSONL file")
    if dst.is_dir():
        raise InvalidArgumentError(f"{dst} is a directory; pass a file path for the output JSONL")
    if not dst.parent.is_dir():
        raise InvalidArgumentError(f"{dst.parent}: no such directory for the output file; create it first")
    if dst.exists() and dst.samefile(src):
        raise InvalidArgumentError(f"{dst} is the input file; pass another path for the output")


def read_input(path: str | Path) -> list[Line]:
    """Parse a batch input file; a line that is not a request comes back with `error` set, not raised."""
    first: dict[str, int] = {}  # custom_id → the line that used it first
    return [_parse(number, obj, first) for number, obj in jsonl.objects(path)]


def _parse(number: int, obj: Any, first: dict[str, int]) -> Line:
    if isinstance(obj, ValueError):  # not UTF-8, or not JSON
        return Line(number, None, error=("invalid_json_line", str(obj)))
    if not isinstance(obj, dict):
        return Line(number, None, error=("invalid_json_line", "expected a JSON object with custom_id, method, url "
                                                              "and body"))
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return Line(number, None, error=("missing_custom_id", "custom_id is missing or not a non-empty string; "
                                                              "every line needs a unique one"))
    if cid in first:
        return Line(number, cid, error=("duplicate_custom_id", f"custom_id {cid!r} repeats line {first[cid]}"))
    first[cid] = number
    if obj.get("method") != "POST":
        return Line(number, cid, error=("invalid_method", f"method is {obj.get('method')!r}; only POST is "
                                                          "supported"))
    url = obj.get("url")
    if url not in URLS:
        return Line(number, cid, error=("invalid_url", f"url {url!r} is not one of {', '.join(URLS)}"))
    return Line(number, cid, url, obj.get("body"))


def _resume(path: Path, keys: set[str | int]) -> dict[str | int, bool]:
    """Keys already answered in `path` → whether they succeeded; a partial last line (a killed run) is cut off."""
    done: dict[str | int, bool] = {}
    for rec in jsonl.resume(path, lambda r: isinstance(r, dict) and "custom_id" in r and "response" in r,
                            "corral batch", "pass another output path", InvalidArgumentError):
        err, resp = rec.get("error"), rec.get("response")
        key = err["line"] if isinstance(err, dict) and "line" in err else rec["custom_id"]
        if key in keys:
            done[key] = isinstance(resp, dict) and resp.get("status_code") == 200
    return done


# --- requests ---------------------------------------------------------------------------------------------------


def _hex_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _response(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": _hex_id("batch_req"), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": _hex_id("req"), "body": body}, "error": None}


def _not_a_request(line: Line) -> dict[str, Any]:
    code, message = line.error
    return {"id": _hex_id("batch_req"), "custom_id": line.custom_id, "response": None,
            "error": {"code": code, "message": message, "line": line.number}}


def _error(message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> dict[str, Any]:
    return P.ErrorResponse(error=P.ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()


async def _answer(service: Service, line: Line) -> tuple[int, dict[str, Any]]:
    """Status code and body the server would answer `line` with (errors mapped as corral.serve.app maps them)."""
    if not isinstance(line.body, dict):
        return 400, _error("body must be a JSON object holding the request")
    body = {**line.body, "model": service.model_id}  # batch mode: the loaded model answers whatever is named
    try:
        if line.url == "/v1/chat/completions":
            req: Any = P.ChatCompletionRequest.model_validate(body)
            call = service.chat
        elif line.url == "/v1/completions":
            req, call = P.CompletionRequest.model_validate(body), service.complete
        else:
            req, call = P.EmbeddingRequest.model_validate(body), service.embed
        if getattr(req, "stream", False):
            return 400, _error("streaming is not supported in a batch; remove \"stream\" from the body", param="stream")
        delay = 0.05
        while True:
            try:
                out = await call(req)
                break
            except QueueFullError:  # only when others share the engine: wait, it is not the line's fault
                await asyncio.sleep(delay)
                delay = min(1.0, 2 * delay)
        return 200, out.model_dump(mode="json")
    except ValidationError as e:
        errs = e.errors()
        param = ".".join(str(x) for x in errs[0]["loc"]) or None
        more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
        return 400, _error(f"{param or 'body'}: {errs[0]['msg']}{more}", param=param)
    except ParamError as e:
        return 400, _error(str(e), param=e.param, code=e.code)
    except CorralError as e:
        if isinstance(e, InvalidArgumentError):
            return 400, _error(str(e))
        return 500, _error(str(e), "server_error")
    except Exception as e:  # noqa: BLE001 — one line's failure (e.g. GenerationError) must not end the batch
        return 500, _error(f"internal error: {type(e).__name__}: {e}", "server_error")


def _sequences(line: Line) -> int:
    """Engine sequences a request will queue (n per prompt); bad values count 1 and fail validation later."""
    if line.url == "/v1/embeddings" or not isinstance(line.body, dict):
        return 1
    n = line.body.get("n", 1)
    n = n if isinstance(n, int) and n > 0 else 1
    prompt = line.body.get("prompt") if line.url == "/v1/completions" else None
    many = isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt)
    return n * (len(prompt) if many else 1)


class _Limiter:
    """At most `capacity` engine sequences in flight; a request holds as many as it queues."""

    def __init__(self, capacity: int):
        self.free = capacity
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.free >= n)
            self.free -= n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.free += n
            self._cond.notify_all()


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        t = task.elapsed or 0.0
        shown = f"{task.fields.get('tokens', 0) / t:.1f} tok/s" if t > 0 else "- tok/s"
        return Text(shown, style="progress.data.speed")


# --- the run ----------------------------------------------------------------------------------------------------


def run_batch(service: Service, in_path: str | Path, out_path: str | Path, *, concurrency: int | None = None,
              console: Console | None = None) -> BatchSummary:
    """Answer every request of the batch input `in_path` with `service`, appending results to `out_path`.

    An existing `out_path` is resumed: lines it already answers are skipped. `concurrency` caps the engine
    sequences in flight (default 4 x the engine's max_batch, within its queue limit). With a `console`, bad lines,
    a progress bar (done/total, tokens/s, ETA) and the first request errors are shown on it. The engine must be
    started. Runs its own event loop; from async code, await `arun_batch`.
    """
    return asyncio.run(arun_batch(service, in_path, out_path, concurrency=concurrency, console=console))


async def arun_batch(service: Service, in_path: str | Path, out_path: str | Path, *,
                     concurrency: int | None = None, console: Console | None = None) -> BatchSummary:
    """`run_batch` for callers that already run an event loop."""
    in_path, out_path = Path(in_path), Path(out_path)
    check_paths(in_path, out_path)
    lines = read_input(in_path)
    done = _resume(out_path, {ln.key for ln in lines})
    say = console.print if console else (lambda *a, **k: None)
    for ln in lines:
        if ln.error:
            say(f"{in_path}:{ln.number}: {ln.error[1]}", markup=False, highlight=False)
    if done:
        say(f"resuming: {len(done)} of {len(lines)} already done", highlight=False)
    todo = [ln for ln in lines if ln.key not in done]
    engine = service.engine
    capacity = max(1, concurrency or min(4 * engine.max_batch, engine.max_queue))
    s = BatchSummary(total=len(lines), resumed=len(done), ok=sum(done.values()), failed=len(done) - sum(done.values()),
                     prompt_tokens=0, completion_tokens=0, seconds=0.0)
    shown = 0
    progress = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), _TokensPerSecond(),
                        TextColumn("eta"), TimeRemainingColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
                        console=console or Console(file=io.StringIO()), disable=console is None)
    out = jsonl.Appender(out_path)
    t0 = time.perf_counter()
    try:
        with progress:
            bar = progress.add_task("batch", total=len(lines), completed=len(done), tokens=0)
            for ln in todo:
                if ln.error:
                    out.write(_not_a_request(ln))
                    s.failed += 1
                    progress.advance(bar)
            limiter = _Limiter(capacity)

            async def one(ln: Line, held: int) -> None:
                nonlocal shown
                try:
                    status, body = await _answer(service, ln)
                finally:
                    await limiter.release(held)
                out.write(_response(ln.custom_id, status, body))
                if status == 200:
                    s.ok += 1
                    usage = body.get("usage") or {}
                    s.prompt_tokens += usage.get("prompt_tokens", 0)
                    s.completion_tokens += usage.get("completion_tokens", 0)
                else:
                    s.failed += 1
                    if shown < _SHOWN_FAILURES:
                        shown += 1
                        more = "; further errors are in the output file only" if shown == _SHOWN_FAILURES else ""
                        say(f"{in_path}:{ln.number}: {ln.custom_id}: {status} {body['error']['message']}{more}",
                            markup=False, highlight=False)
                progress.update(bar, advance=1, tokens=s.completion_tokens)

            tasks: set[asyncio.Task] = set()
            try:
                for ln in todo:
                    if ln.error:
                        continue
                    held = min(capacity, _sequences(ln))
                    await limiter.acquire(held)
                    task = asyncio.create_task(one(ln, held))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
            except BaseException:  # a write failed or we were interrupted: stop the rest (their engine work too)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # Let the engine drop the cancelled requests while this loop still takes their last events.
                until = time.perf_counter() + 2.0
                while (engine.running or engine.waiting) and time.perf_counter() < until:
                    await asyncio.sleep(0.02)
                raise
    finally:
        out.close()
        s.seconds = time.perf_counter() - t0
    return s
