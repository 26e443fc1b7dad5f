"""A streamed answer as server-sent events, chat or completions alike, and the output shield's hold-back on
streams: text is released only after the guard has passed the answer so far."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.engine.engine import Engine, Finished, Request
from corral.serve import protocol as P
from corral.serve.bridge import Job, cancel
from corral.serve.responses import merge, sse_error, usage
from corral.text import Delta


def filtered(job: Job, completion_tokens: int = 0) -> Finished:
    """The end of a choice a shield blocked."""
    return Finished("content_filter", len(job.prompt_ids), completion_tokens, 0)


async def events(engine: Engine, shields: Any, jobs: list[Job], q: asyncio.Queue, reqs: list[Request],
                 opening: AsyncIterator[str], delta: Callable[[int, Delta], str | None],
                 finish: Callable[[int, Finished], str], usage_line: Callable[[P.Usage], str] | None,
                 shielded: list[list[dict[str, str]]] | None = None) -> AsyncIterator[str]:
    """The SSE lines of a stream, chat or completions alike (they differ in the chunks `opening`, `delta`,
    `finish` and `usage_line` build): an error event ends it early, `[DONE]` ends it well, and a client that goes
    away frees its slots at the next engine step.

    `shielded` (each job's request messages): the output shield is on. Text is then held back and released
    only after the guard has passed the answer so far: every `--shield-stream-tokens` tokens (the whole answer
    up to that point is checked, so what the client has seen is always a checked prefix), and once more at the
    end for the rest. A blocked choice is cancelled and ends with the refusal and finish_reason
    content_filter (`--shield-action refuse`), or the stream ends with an error event, code content_filter
    (`error`). Text released before the block stays with the client: it was checked and passed as a prefix.
    """
    done: dict[int, Finished] = {}
    held: dict[int, list[Delta]] = {}
    answer: dict[int, str] = {}
    tokens: dict[int, int] = {}
    every = shields.stream_tokens if shielded is not None else 0
    try:
        async for line in opening:
            yield line
        while len(done) < len(jobs):
            i, ev = await q.get()
            if i in done:  # a choice the output shield stopped: its last events are dropped
                continue
            if isinstance(ev, Delta):
                if shielded is None:
                    line = delta(i, ev)
                    if line:
                        yield line
                    continue
                held.setdefault(i, []).append(ev)
                answer[i] = answer.get(i, "") + ev.text
                tokens[i] = tokens.get(i, 0) + len(ev.token_ids)
                if not every or sum(len(d.token_ids) for d in held[i]) < every:
                    continue
            elif ev.finish_reason == "error":
                done[i] = ev
                yield sse_error(ev.error or "generation failed")
                return
            if shielded is not None and held.get(i):
                (block,) = await shields.check_output([(shielded[i], answer[i])])
                if block is not None:
                    engine.cancel(reqs[i])
                    done[i] = filtered(jobs[i], tokens.get(i, 0))
                    if shields.action == "error":
                        cancel(engine, reqs)
                        yield sse_error(f"{block.describe(shields.names)}; the answer was withheld",
                                         "invalid_request_error", "content_filter")
                        return
                    line = delta(i, Delta(shields.refusal, []))
                    if line:
                        yield line
                    yield finish(i, done[i])
                    continue
                parts, held[i] = held[i], []
                line = delta(i, merge(parts))
                if line:
                    yield line
            if isinstance(ev, Finished):
                done[i] = ev
                yield finish(i, ev)
        if usage_line:
            yield usage_line(usage(jobs, done))
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or we are done): free the slots at the next step
        if len(done) < len(jobs):
            cancel(engine, reqs)
