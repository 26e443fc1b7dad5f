"""The text side of generation: token ids to text as they stream, and stop strings. The engine knows token ids only
(`corral.engine`); every caller that wants text wraps a request's events here.

- `Detokenizer`, `StopStrings` (from corral.tokenizer): streaming ids to text that never emits half a UTF-8
  character; the text cut at the first stop string, a tail that could still become one held back;
- `Delta`: new text with its token ids (and logprobs), what callers of the engine read;
- `text_events`: wraps a request's engine events into `Delta`s; a stop-string hit cancels the request in the
  engine (as vLLM does) and finishes it with reason "stop", counting the tokens up to the hit;
- `generate_many`: the one offline helper, prompts in, `Generation`s out, through one engine on this thread;
- `Session`: one stream whose KV stays between calls (`corral generate`, `corral chat`): a one-slot engine;
- `check_draft`: a speculative draft model must share the target's tokenizer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from corral.engine.engine import Engine, Finished, Request, TokenLogprob, Tokens
from corral.engine.sampling import SamplingParams
from corral.errors import InvalidArgumentError
from corral.tokenizer import Detokenizer, StopStrings


@dataclass
class Delta:
    """New text of a request (possibly empty while a UTF-8 character or a stop string is pending)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


Event = Delta | Finished


def text_events(tok: Any, stop: list[str], emit: Callable[[Event], None], cancel: Callable[[], None]
                ) -> Callable[[Tokens | Finished], None]:
    """An engine `emit` callback that turns a request's `Tokens` into `Delta`s for `emit`. At a stop string the
    text is cut, the engine is told to `cancel` the request, and what it sends after is dropped; its `Finished`
    then says "stop" with the tokens up to the hit. On any other finish, text held back for a possible stop string
    is sent first. Called on the engine thread, like `emit`."""
    detok, stops = Detokenizer(tok), StopStrings(stop)
    count = 0

    def on_event(ev: Tokens | Finished) -> None:
        nonlocal count
        if isinstance(ev, Finished):
            if stops.hit:
                ev = replace(ev, finish_reason="stop", completion_tokens=count)
            elif ev.finish_reason in ("stop", "length") and (rest := stops.flush()):
                emit(Delta(rest, []))
            emit(ev)
            return
        if stops.hit:
            return  # tokens the engine made before it saw the cancel
        text = "".join(stops.feed(detok.add(t)) for t in ev.token_ids if not stops.hit)
        count += len(ev.token_ids)
        emit(Delta(text, list(ev.token_ids), ev.logprobs))
        if stops.hit:
            cancel()

    return on_event


@dataclass
class Generation:
    """One finished answer (`generate_many`, `Session`)."""

    text: str
    finish_reason: str  # stop | length | error
    completion_tokens: int
    error: str | None = None
    seconds: float = 0.0  # from the request's submission (generate_many: the call's start) until it finished
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused
    prefill_s: float = 0.0  # submission to the first token
    draft_proposed: int = 0  # speculative decoding: draft tokens the target checked
    draft_accepted: int = 0  # ... and kept

    @property
    def decode_tps(self) -> float:
        n, s = self.completion_tokens - 1, self.seconds - self.prefill_s
        return n / s if n > 0 and s > 0 else 0.0

    @property
    def prefill_tps(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0


def generate_many(model: Any, tok: Any, prompts: Sequence[list[int]],
                  params: SamplingParams | Sequence[SamplingParams], max_batch: int = 16, max_seq_len: int = 2048,
                  on_finish: Callable[[int, Generation], None] | None = None, compile: bool = False,
                  constraints: Sequence[Any] | None = None) -> list[Generation]:
    """Answer every prompt (token ids) through one `Engine` stepped on this thread: the one offline helper (eval,
    synth, the recipe's selection, the guard, the examples). `params` is one for all or one per prompt; stop
    strings apply. A prompt that leaves less than its max_tokens of room loses its oldest tokens. `on_finish(i,
    gen)` is called as each one completes (in completion order). `compile`: the engine's compiled decode step.
    `constraints`: one per prompt (or None), each a fresh grammar state (`corral.grammar`)."""
    if not prompts:
        return []
    plist = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    ctx = model.config.max_position_embeddings
    need = max(len(p) + sp.max_tokens + 1 for p, sp in zip(prompts, plist, strict=True))
    seq = max(16, min(ctx, max_seq_len, need))
    engine = Engine(model, stop_ids=tok.stop_ids, max_batch=max(1, min(max_batch, len(prompts))), max_seq_len=seq,
                    max_queue=len(prompts) + 1, compile=compile)
    if compile:
        engine.warm_up()
    texts = [""] * len(prompts)
    results: list[Generation | None] = [None] * len(prompts)
    t0 = time.perf_counter()

    def emit(i: int) -> Callable[[Event], None]:
        def f(ev: Event) -> None:
            if isinstance(ev, Delta):
                texts[i] += ev.text
            else:
                results[i] = Generation(texts[i], ev.finish_reason, ev.completion_tokens, ev.error,
                                        time.perf_counter() - t0)
                if on_finish:
                    on_finish(i, results[i])
        return f

    for i, (ids, sp) in enumerate(zip(prompts, plist, strict=True)):
        room = max(engine.max_seq_len // 2, engine.max_seq_len - sp.max_tokens - 1)
        req = Request(list(ids)[-room:], sp, lambda ev: None)
        req.constraint = constraints[i] if constraints is not None else None
        req.emit = text_events(tok, sp.stop, emit(i), lambda req=req: engine.cancel(req))
        engine.submit(req)
    engine.run_until_idle()
    return [r if r is not None else Generation(texts[i], "error", 0, "not finished")
            for i, r in enumerate(results)]


PREFILL_CHUNK = 512  # one stream: nothing else waits, so a long prompt goes in big chunks


class Session:
    """One stream of generation whose KV stays between calls: a one-slot `Engine` stepped on this thread
    (`corral generate`, `corral chat`, the decode benchmarks). A prompt that starts with what the slot holds (a
    chat's history) prefills only its new tokens; `reset()` forgets them. `draft`: a draft model for speculative
    decoding (`check_draft` first), `draft_tokens` per round. `compile`: the compiled decode step (on CUDA, one
    CUDA graph over the whole cache)."""

    def __init__(self, model: Any, tok: Any, *, max_seq_len: int = 4096, compile: bool = False,
                 draft: Any = None, draft_tokens: int = 4):
        self.tok = tok
        self.engine = Engine(model, stop_ids=tok.stop_ids, max_batch=1, max_seq_len=max_seq_len or 4096,
                             prefill_chunk=PREFILL_CHUNK, max_queue=1, compile=compile, draft=draft,
                             draft_tokens=draft_tokens, batch_invariant=False)
        self.max_seq_len = self.engine.max_seq_len

    def reset(self) -> None:
        """Forget the cached prefix: the next prompt is prefilled in full."""
        self.engine.forget()

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[str | Generation]:
        """Yield text as it becomes final (stop strings applied), then one `Generation`."""
        if not prompt_ids:
            raise InvalidArgumentError("the prompt is empty: give at least one token of text")
        n, ctx = len(prompt_ids), self.engine.model.config.max_position_embeddings
        if n >= self.max_seq_len:
            raise InvalidArgumentError(f"the prompt has {n} tokens; this model's context here is {self.max_seq_len} "
                                       f"(raise --max-seq-len up to {ctx}, or shorten the prompt)")
        eng, sp, events = self.engine, self.engine.drafter, deque()
        drafts = (sp.proposed, sp.accepted) if sp is not None else (0, 0)
        req = Request(list(prompt_ids), params, events.append)
        req.emit = text_events(self.tok, params.stop, events.append, lambda: eng.cancel(req))
        t0 = time.perf_counter()
        eng.submit(req)
        text, ids, done = [], [], None
        try:
            while done is None:
                if not events:
                    eng.step()
                while events:
                    ev = events.popleft()
                    if isinstance(ev, Finished):
                        done = ev
                    elif ev.text or ev.token_ids:
                        ids += ev.token_ids
                        if ev.text:
                            text.append(ev.text)
                            yield ev.text
        finally:
            if done is None:  # the caller stopped reading (Ctrl-C, a closed pipe): free the slot
                eng.cancel(req)
                eng.run_until_idle()
        end = time.perf_counter()
        first = (req.first_token_at or end) - t0
        now = (sp.proposed, sp.accepted) if sp is not None else (0, 0)
        yield Generation("".join(text), done.finish_reason, done.completion_tokens, done.error, end - t0,
                         ids[:done.completion_tokens], n, done.cached_tokens, first,
                         now[0] - drafts[0], now[1] - drafts[1])

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Run to the end; return the `Generation` (no streaming)."""
        *_, last = self.stream(prompt_ids, params)
        return last


class DraftModelError(InvalidArgumentError):
    """A draft model that cannot draft for this target (another tokenizer)."""


def check_draft(target_tok: Any, draft_tok: Any, target_name: str = "the target",
                draft_name: str = "the draft") -> None:
    """Raise `DraftModelError` unless both tokenizers map every id to the same token."""
    how = ("speculative decoding needs a draft that shares the target's tokenizer, such as a student made from it "
           "by `corral distill`")
    if target_tok.vocab_size != draft_tok.vocab_size:
        raise DraftModelError(f"--draft-model {draft_name}: its tokenizer has {draft_tok.vocab_size} tokens, "
                              f"{target_name}'s has {target_tok.vocab_size}; {how}")
    for i in range(target_tok.vocab_size):
        a, b = target_tok.piece(i), draft_tok.piece(i)
        if a != b:
            raise DraftModelError(f"--draft-model {draft_name}: token {i} is {b!r} in its tokenizer and {a!r} in "
                                  f"{target_name}'s; {how}")
