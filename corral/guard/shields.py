"""Shields: a guard model and the injection detector in front of (input) and behind (output) a served model.

    shields = Shields(guard, input=True, output=True, injection=InjectionDetector.load(), run=engine.call)
    block = await shields.check_input(messages)             # None, or a `Block` saying which shield and why
    blocks = await shields.check_output([(messages, answer), ...])  # one per answer

What is checked:
- input: the conversation up to its last user message (system messages are dropped, as Llama Guard's format has no
  place for them; tool messages are not the user's words and are left to the injection shield), assessed as 'User'.
- output: the same conversation with the answer as the agent's turn, assessed as 'Agent'.
- injection: every user and tool message of the request, each scored whole and paragraph by paragraph (a document
  pasted for summary is checked part by part; see corral/guard/injection.py). System and assistant messages are
  the deployer's and the model's and are not checked. All of them, not just the newest: a client sends the whole
  history each turn, and a forged history is as much input as the last message.

Threads: the guard model runs on the engine's thread, between two engine steps (`run=engine.call`), never beside
it. Two models computing at once on a small CPU box would fight over the same cores (and torch's thread pools), and
nothing in the guard touches the engine's cache or state. The price is that a check pauses every stream of the
served model for its duration (one forward in score mode: milliseconds to tens of milliseconds for a small guard).
Checks that arrive together are batched: all pending conversations go into one `Guard.check_many` call.
Without `run`, checks run on a one-thread pool of their own (standalone use; not beside a running engine).

Failure policy: a conversation the guard cannot check (its prompt does not fit the guard's context) is blocked (fail
closed) with category "unchecked"; an error inside the guard model propagates (HTTP 500).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidArgumentError

SHIELDS = ("input", "output")
ACTIONS = ("refuse", "error")
REFUSAL = "I'm sorry, but I can't help with that."
UNCHECKED = "unchecked"  # the category of a conversation the guard could not check (fail closed)
UNSPECIFIED = "unspecified"  # flagged without a category the taxonomy knows (score mode, unparsed verdicts)


@dataclass
class Block:
    """Why a request or an answer is not passed on: the shield ('input', 'output', 'injection'), the categories
    (guard codes, 'injection', 'unchecked' or 'unspecified') and the score when there is one."""

    shield: str
    categories: list[str]
    score: float | None = None
    detail: str = ""

    def describe(self, names: dict[str, str] | None = None) -> str:
        cats = ", ".join(f"{c}: {names[c]}" if names and c in names else c for c in self.categories)
        return f"the {self.shield} shield flagged this {'answer' if self.shield == 'output' else 'request'}" + (
            f" ({cats})" if cats else "") + (f"; {self.detail}" if self.detail else "")


class ShieldHooks:
    """Metrics callbacks (the server's prometheus `Metrics` implements them)."""

    def on_guard_check(self, shield: str, seconds: float, parsed: bool) -> None: ...
    def on_guard_block(self, shield: str, categories: list[str]) -> None: ...


@dataclass
class _Pending:
    conversation: list[dict[str, str]]
    assess: str
    future: Future = field(default_factory=Future)


class Shields:
    """The shields of one server. `guard`: a `corral.guard.Guard` (or anything with its `check_many`,
    `taxonomy`); `injection`: an `InjectionDetector`; `run(fn) -> Future`: where guard work runs (`engine.call`)."""

    def __init__(self, guard: Any = None, *, input: bool = True, output: bool = True, injection: Any = None,
                 action: str = "refuse", stream_tokens: int = 32, refusal: str = REFUSAL,
                 run: Callable[[Callable[[], Any]], Future] | None = None, hooks: ShieldHooks | None = None,
                 name: str = "guard"):
        if action not in ACTIONS:
            raise InvalidArgumentError(f"shield action {action!r}: expected refuse or error")
        if (input or output) and guard is None:
            raise InvalidArgumentError("the input and output shields need a guard model (--guard)")
        if stream_tokens < 0:
            raise InvalidArgumentError("--shield-stream-tokens must be >= 0 (0: check a stream once, at its end)")
        self.guard, self.injection = guard, injection
        self.input, self.output = bool(input and guard is not None), bool(output and guard is not None)
        self.action, self.stream_tokens, self.refusal = action, stream_tokens, refusal
        self.hooks = hooks or ShieldHooks()
        self.name = name
        self._run = run
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._scheduled = False

    @property
    def names(self) -> dict[str, str]:
        """Category code → name, for messages."""
        return {c.code: c.name for c in self.guard.taxonomy} if self.guard is not None else {}

    # --- the checks ---------------------------------------------------------------------------------------------

    async def check_input(self, messages: Sequence[dict[str, Any]]) -> Block | None:
        """The injection shield, then the input shield, on a request's messages; the first block, or None."""
        return await self.check_inputs([messages])

    async def check_inputs(self, requests: Sequence[Sequence[dict[str, Any]]]) -> Block | None:
        """`check_input` for several conversations at once (a completion request's prompts): the first block."""
        if self.injection is not None:
            block = await self.check_injection([m for msgs in requests for m in msgs])
            if block is not None:
                return block
        if not self.input:
            return None
        convs = [c for c in (_turns(msgs) for msgs in requests) if any(t["role"] == "user" for t in c)]
        if not convs:
            return None  # nothing of the user's to check
        return next((b for b in await self._judge("input", convs, "user") if b is not None), None)

    async def check_output(self, pairs: Sequence[tuple[Sequence[dict[str, Any]], str]]) -> list[Block | None]:
        """The output shield on (request messages, answer) pairs, checked together; an empty answer passes."""
        if not self.output:
            return [None] * len(pairs)
        todo, convs = [], []
        for i, (messages, answer) in enumerate(pairs):
            if not answer.strip():
                continue
            base = _turns(messages)
            last = max((j for j, t in enumerate(base) if t["role"] == "user"), default=None)
            base = base[: last + 1] if last is not None else []
            todo.append(i)
            convs.append([*base, {"role": "assistant", "content": answer}])
        out: list[Block | None] = [None] * len(pairs)
        if todo:
            for i, b in zip(todo, await self._judge("output", convs, "agent"), strict=True):
                out[i] = b
        return out

    async def check_injection(self, messages: Sequence[dict[str, Any]]) -> Block | None:
        """The injection detector on every user and tool message (in a worker thread: a long document takes a few
        milliseconds of pure Python)."""
        texts = [m.get("content") or "" for m in messages if m.get("role") in ("user", "tool")]
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            return None
        t0 = time.perf_counter()
        results = await asyncio.to_thread(lambda: [self.injection.check(t) for t in texts])
        self.hooks.on_guard_check("injection", time.perf_counter() - t0, True)
        worst = max(results, key=lambda r: r.score)
        if not worst.flagged:
            return None
        self.hooks.on_guard_block("injection", ["injection"])
        hits = f"; matched: {', '.join(worst.heuristics)}" if worst.heuristics else ""
        return Block("injection", ["injection"], worst.score, f"P(injection) {worst.score:.2f}{hits}")

    async def moderate(self, texts: Sequence[str]) -> list[Any]:
        """Guard results (`GuardResult`) for texts, each read as a user message (POST /v1/moderations). In generate
        mode the score is added from the scorer (one more forward), so every result has one."""
        convs = [[{"role": "user", "content": t}] for t in texts]
        t0 = time.perf_counter()
        results = await self._submit(convs, "user")
        for r in results:
            if isinstance(r, BaseException):
                raise r
        missing = [i for i, r in enumerate(results) if r.score is None]
        scorer = getattr(self.guard, "unsafe_probability", None)
        if missing and scorer is not None:
            ids = [self.guard.prompt_ids(convs[i], "user") for i in missing]
            probs, _ = await asyncio.wrap_future(self._call(lambda: scorer(ids)))
            for i, p in zip(missing, probs, strict=True):
                results[i].score = p
        for r in results:
            self.hooks.on_guard_check("moderation", (time.perf_counter() - t0) / max(1, len(results)),
                                      r.verdict.parsed)
        return results

    # --- the guard, batched on the engine thread --------------------------------------------------------------

    async def _judge(self, shield: str, convs: list[list[dict[str, str]]], assess: str) -> list[Block | None]:
        t0 = time.perf_counter()
        results = await self._submit(convs, assess)
        seconds = time.perf_counter() - t0
        blocks: list[Block | None] = []
        for r in results:
            if isinstance(r, InvalidArgumentError):  # the guard cannot read it: fail closed
                self.hooks.on_guard_check(shield, seconds, True)
                block = Block(shield, [UNCHECKED], None, f"the guard could not check it ({r})")
            elif isinstance(r, BaseException):
                raise r
            else:
                self.hooks.on_guard_check(shield, seconds, r.verdict.parsed)
                cats = list(r.categories) or [UNSPECIFIED]
                block = Block(shield, cats, r.score) if r.unsafe else None
            if block is not None:
                self.hooks.on_guard_block(shield, block.categories)
            blocks.append(block)
        return blocks

    async def _submit(self, convs: list[list[dict[str, str]]], assess: str) -> list[Any]:
        """Queue conversations for the next batched check; each result is a `GuardResult` or the exception that
        conversation raised."""
        items = [_Pending(c, assess) for c in convs]
        with self._lock:
            self._pending += items
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self._call(self._drain)
        out = []
        for it in items:
            try:
                out.append(await asyncio.wrap_future(it.future))
            except Exception as e:  # noqa: BLE001 - handed back per conversation
                out.append(e)
        return out

    def _call(self, fn: Callable[[], Any]) -> Future:
        if self._run is not None:
            return self._run(fn)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="corral-guard")
        return self._pool.submit(fn)

    def _drain(self) -> None:
        """Check every pending conversation in one `check_many` (the engine thread); a batch that fails because of
        one conversation is retried one by one, so the others still get their verdicts."""
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, [], False
        if not batch:
            return
        try:
            results = self.guard.check_many([p.conversation for p in batch], [p.assess for p in batch],
                                            categories=True)
        except Exception:  # noqa: BLE001 - find out which one
            if len(batch) == 1:
                _settle(batch[0].future, self.guard.check_many, batch[0])
                return
            for p in batch:
                _settle(p.future, self.guard.check_many, p)
            return
        for p, r in zip(batch, results, strict=True):
            p.future.set_result(r)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _settle(fut: Future, check_many: Callable[..., Any], p: _Pending) -> None:
    try:
        fut.set_result(check_many([p.conversation], [p.assess], categories=True)[0])
    except Exception as e:  # noqa: BLE001 - handed to the waiting request
        fut.set_exception(e)


def _turns(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The user and assistant turns of a request, as the guard reads them (system, developer and tool messages
    left out)."""
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages
            if m.get("role") in ("user", "assistant")]


def parse_shields(spec: str) -> tuple[bool, bool]:
    """`--shield input,output` → (input, output)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in SHIELDS]
    if bad or not names:
        raise InvalidArgumentError(f"--shield {spec!r}: expected input, output or input,output")
    return "input" in names, "output" in names
