"""The thread bridge: a request's jobs onto the engine (its thread), their events back to the request's asyncio
loop, in batches (`Mailbox`), with the metrics hooks called on the way."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from corral.engine.engine import ContextLengthError, Engine, Finished, Request
from corral.engine.sampling import SamplingParams
from corral.serve.errors import GenerationError, ParamError
from corral.text import Delta, text_events


@dataclass
class Job:
    """One generation the engine runs: a choice of a completion."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    top_logprobs: int | None
    constraint: Any = None


class Hooks:
    """Metrics callbacks; the app installs prometheus ones, `corral batch` none."""

    def on_first_token(self, seconds: float) -> None: ...
    def on_token_gap(self, seconds: float) -> None: ...
    def on_finished(self, endpoint: str, ev: Finished, seconds: float) -> None: ...
    def on_guard_check(self, shield: str, seconds: float, parsed: bool) -> None: ...
    def on_guard_block(self, shield: str, categories: list[str]) -> None: ...


def submit(engine: Engine, tok: Any, hooks: Hooks, jobs: list[Job], endpoint: str
           ) -> tuple[asyncio.Queue, list[Request]]:
    """Queue every job on the engine; events arrive as (index, event) on the returned queue."""
    box = Mailbox.of(asyncio.get_running_loop())
    q: asyncio.Queue = asyncio.Queue()
    reqs: list[Request] = []
    try:
        for job in jobs:
            t0 = time.perf_counter()
            last = [0.0]

            def emit(ev, i=job.index, t0=t0, last=last) -> None:  # engine thread
                now = time.perf_counter()
                if isinstance(ev, Delta) and ev.token_ids:
                    if last[0] == 0.0:
                        hooks.on_first_token(now - t0)
                    else:
                        hooks.on_token_gap(now - last[0])
                    last[0] = now
                elif isinstance(ev, Finished):
                    hooks.on_finished(endpoint, ev, now - t0)
                box.post(q, (i, ev))

            req = Request(job.prompt_ids, job.params, emit, top_logprobs=job.top_logprobs)
            req.constraint = job.constraint
            req.emit = text_events(tok, job.params.stop, emit, lambda req=req: engine.cancel(req))
            reqs.append(engine.submit(req))
    except ContextLengthError as e:
        cancel(engine, reqs)
        param = "messages" if endpoint == "chat" else "prompt"
        raise ParamError(str(e), param, "context_length_exceeded") from None
    except BaseException:
        cancel(engine, reqs)
        raise
    return q, reqs


def cancel(engine: Engine, reqs: list[Request]) -> None:
    for r in reqs:
        engine.cancel(r)


async def collect(engine: Engine, tok: Any, hooks: Hooks, jobs: list[Job], endpoint: str
                  ) -> tuple[list[str], list[list], dict[int, Finished]]:
    """Run jobs to the end (non-streaming): each one's text, logprobs and Finished event."""
    q, reqs = submit(engine, tok, hooks, jobs, endpoint)
    texts, lps = [""] * len(jobs), [[] for _ in jobs]
    done: dict[int, Finished] = {}
    try:
        while len(done) < len(jobs):
            i, ev = await q.get()
            if isinstance(ev, Delta):
                texts[i] += ev.text
                lps[i] += ev.logprobs or []
            else:
                done[i] = ev
    finally:  # cancelled (the client went away): free the slots at the next step
        if len(done) < len(jobs):
            cancel(engine, reqs)
    for ev in done.values():
        if ev.finish_reason == "error":
            raise GenerationError(ev.error or "generation failed")
    return texts, lps, done


class Mailbox:
    """Engine thread → event loop, one wake-up per batch of events: a decode step emits one event per running
    request, and a wake-up each (a write to the loop's self-pipe, a loop iteration) costs the engine CPU time
    on a small machine."""

    _boxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # a weak reference: the registry's value must not keep its key (the loop) alive
        self.loop, self.items, self.scheduled, self.lock = weakref.ref(loop), deque(), False, threading.Lock()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Mailbox:
        box = cls._boxes.get(loop)
        if box is None:
            box = cls._boxes[loop] = cls(loop)
        return box

    def post(self, q: asyncio.Queue, item: Any) -> None:  # engine thread
        self.items.append((q, item))
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        loop = self.loop()
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: its caller gave up (an interrupted batch)
            pass

    def _deliver(self) -> None:  # loop thread
        with self.lock:
            self.scheduled = False  # before draining: an item posted from now on schedules a new delivery
        while self.items:
            q, item = self.items.popleft()
            q.put_nowait(item)
