"""The text side of generation: token ids to text as they stream, and stop strings. The engine knows token ids only
(`corral.engine`); every caller that wants text wraps a request's events here.

- `Detokenizer`, `StopStrings` (from corral.tokenizer): streaming ids to text that never emits half a UTF-8
  character; the text cut at the first stop string, a tail that could still become one held back;
- `Delta`: new text with its token ids (and logprobs), what callers of the engine read;
- `text_events`: wraps a request's engine events into `Delta`s; a stop-string hit cancels the request in the
  engine (as vLLM does) and finishes it with reason "stop", counting the tokens up to the hit;
- `generate_many`: the one offline helper, prompts in, `Generation`s out, through one engine on this thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from corral.engine.engine import Engine, Finished, Request, TokenLogprob, Tokens
from corral.engine.sampling import SamplingParams
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
    """One finished answer of `generate_many`."""

    text: str
    finish_reason: str  # stop | length | error
    completion_tokens: int
    error: str | None = None
    seconds: float = 0.0  # from the start of the call until this one finished


def generate_many(model: Any, tok: Any, prompts: Sequence[list[int]],
                  params: SamplingParams | Sequence[SamplingParams], max_batch: int = 16, max_seq_len: int = 2048,
                  on_finish: Callable[[int, Generation], None] | None = None, compile: bool = False
                  ) -> list[Generation]:
    """Answer every prompt (token ids) through one `Engine` stepped on this thread: the one offline helper (eval,
    synth, the recipe's selection, the guard, the examples). `params` is one for all or one per prompt; stop
    strings apply. A prompt that leaves less than its max_tokens of room loses its oldest tokens. `on_finish(i,
    gen)` is called as each one completes (in completion order). `compile`: the engine's compiled decode step."""
    import time

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
        req.emit = text_events(tok, sp.stop, emit(i), lambda req=req: engine.cancel(req))
        engine.submit(req)
    engine.run_until_idle()
    return [r if r is not None else Generation(texts[i], "error", 0, "not finished")
            for i, r in enumerate(results)]
