"""OpenAI response pieces from engine results: ids, finish reasons, usage, logprobs, and server-sent events."""

from __future__ import annotations

import json
import uuid
from typing import Any

from corral.engine.engine import Finished, TokenLogprob
from corral.serve import protocol as P
from corral.serve.bridge import Job
from corral.text import Delta


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def reason(ev: Finished) -> str:
    return {"cancelled": "abort"}.get(ev.finish_reason, ev.finish_reason)


def usage(jobs: list[Job], done: dict[int, Finished]) -> P.Usage:
    """Prompt tokens once per distinct prompt (n choices of one prompt share it), as OpenAI counts."""
    seen, prompt, cached = set(), 0, 0
    for job in jobs:
        key = id(job.prompt_ids)
        if key not in seen:
            seen.add(key)
            prompt += len(job.prompt_ids)
            cached += done[job.index].cached_tokens if job.index in done else 0
    completion = sum(ev.completion_tokens for ev in done.values())
    return P.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=P.PromptTokensDetails(cached_tokens=cached))


def _token(tok: Any, tid: int) -> tuple[str, list[int]]:
    b = tok.token_bytes()[tid]
    return b.decode("utf-8", errors="replace"), list(b)


def chat_logprobs(tok: Any, lps: list[TokenLogprob]) -> P.ChoiceLogprobs:
    content = []
    for lp in lps:
        text, b = _token(tok, lp.token_id)
        top = [P.TopLogprob(token=t, logprob=v, bytes=tb) for t, tb, v in ((*_token(tok, i), v) for i, v in lp.top)]
        content.append(P.TokenLogprobOut(token=text, logprob=lp.logprob, bytes=b, top_logprobs=top))
    return P.ChoiceLogprobs(content=content)


def completion_logprobs(tok: Any, lps: list[TokenLogprob | None], offset: int,
                        prompt_ids: list[int] | None = None) -> P.CompletionLogprobs:
    """The legacy completions' logprobs from `offset` in the text; `prompt_ids`: an echoed prompt's (its first token
    has no logprob: None)."""
    out = P.CompletionLogprobs()
    ids = prompt_ids if prompt_ids is not None else [lp.token_id for lp in lps]
    for lp, tid in zip(lps, ids, strict=True):
        text = _token(tok, tid)[0]
        out.tokens.append(text)
        out.token_logprobs.append(None if lp is None else lp.logprob)
        out.top_logprobs.append(None if lp is None else {_token(tok, i)[0]: v for i, v in lp.top})
        out.text_offset.append(offset)
        offset += len(text)
    return out


def chunk_sse(c: P.ChatCompletionChunk | P.Completion, include_usage: bool) -> str:
    """A stream chunk as OpenAI sends it: `finish_reason` and `logprobs` always present (null until set),
    `usage` null on every chunk but the last when usage was asked for, unset fields of `delta` left out."""
    d = c.model_dump(exclude_none=True)
    for ch in d["choices"]:
        ch.setdefault("logprobs", None)
        ch.setdefault("finish_reason", None)
    if include_usage:
        d.setdefault("usage", None)
    return sse(json.dumps(d, ensure_ascii=False, separators=(",", ":")))


def sse(data: str) -> str:
    return f"data: {data}\n\n"


def sse_error(message: str, type_: str = "server_error", code: str = "generation_failed") -> str:
    body = P.ErrorResponse(error=P.ErrorDetail(message=message, type=type_, code=code))
    return sse(body.model_dump_json()) + "data: [DONE]\n\n"




def merge(parts: list[Delta]) -> Delta:
    """Held-back deltas released as one."""
    lps = [lp for d in parts for lp in (d.logprobs or [])]
    return Delta("".join(d.text for d in parts), [t for d in parts for t in d.token_ids],
                 lps if any(d.logprobs for d in parts) else None)
