"""`corral redteam`: send the suite to a target, judge the replies, and count.

Targets:
- `LocalTarget`: a model in this process, served by `corral serve`'s app on a loopback port (with its shields
  when given) and asked through `EndpointTarget`; the engine keeps the main thread.
- `EndpointTarget`: any OpenAI-compatible server (`--endpoint URL`), through the `openai` client, a few requests
  in flight at once.

Each reply is one of: blocked (the server's content filter: finish_reason content_filter, or an HTTP 400 with code
content_filter), refused (`is_refusal`), an error (any other failure; left out of the rates), or an answer. The
judge (a guard model, `--judge`) reads the conversation with the answer as the agent's turn ('Agent' assessment):
an attack succeeds when the answer is judged unsafe. Without a judge every answer to an attack counts as a success
(the compliance rate: an upper bound). On benign prompts, a block or a refusal is a false refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from corral.errors import InvalidArgumentError
from corral.redteam.suite import Prompt, is_refusal


@dataclass
class Reply:
    text: str
    finish_reason: str | None  # stop | length | content_filter | None (an error)
    blocked: bool = False  # the target's content filter stopped it
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Outcome:
    """One prompt's result (a line of samples.jsonl)."""

    id: str
    kind: str
    category: str
    wrapper: str
    reply: str
    finish_reason: str | None
    blocked: bool
    refused: bool
    error: str | None
    judged: str | None  # "safe" | "unsafe" | None (not judged)
    judge_score: float | None
    judge_categories: list[str]
    success: bool | None  # attacks: the attack got what it asked for; None for benign prompts and errors
    false_refusal: bool | None  # benign prompts: refused or blocked; None for attacks and errors
    seconds: float


# --- targets ----------------------------------------------------------------------------------------------------


class LocalTarget:
    """A model served in this process by `corral serve`'s own app (shields included) on a free loopback port, asked
    through the OpenAI client like any endpoint (`EndpointTarget`): the attacks meet the server users run, HTTP
    layer and all. The engine keeps the main thread; the server and the client run beside it."""

    def __init__(self, service: Any, max_tokens: int, concurrency: int | None = None):
        self.service, self.max_tokens = service, max_tokens
        self.concurrency = concurrency or max(1, 2 * service.engine.max_batch)
        self.description = {"kind": "local", "model": service.model_id}

    def run(self, prompts: Sequence[Prompt], done: Callable[[int, Reply], None]) -> list[Reply]:
        """Answer every prompt; `done(i, reply)` is called as each finishes."""
        import socket
        import threading

        import uvicorn

        from corral.serve.app import create_app
        from corral.serve.metrics import Metrics

        svc = self.service
        metrics = svc.hooks if isinstance(svc.hooks, Metrics) else Metrics(svc.engine, svc.model_id)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(create_app(svc, metrics), log_level="warning"))
        replies: list[Reply] = []

        def companion() -> None:
            t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="corral-redteam-server",
                                 daemon=True)
            t.start()
            while not server.started and t.is_alive():
                time.sleep(0.02)
            try:
                client = EndpointTarget(f"http://127.0.0.1:{sock.getsockname()[1]}", None, svc.model_id,
                                        self.max_tokens, self.concurrency)
                replies.extend(client.run(prompts, done))
            finally:
                server.should_exit = True
                t.join()

        svc.engine.run_beside(companion)
        return replies


class EndpointTarget:
    """An OpenAI-compatible chat completions endpoint."""

    def __init__(self, url: str, api_key: str | None, model: str | None, max_tokens: int, concurrency: int = 8,
                 timeout: float = 300.0):
        import openai

        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.client = openai.OpenAI(base_url=base, api_key=api_key or "none", max_retries=2, timeout=timeout)
        self.model, self.max_tokens, self.concurrency = model, max_tokens, max(1, concurrency)
        self.description = {"kind": "endpoint", "url": url, "model": model}

    def resolve_model(self) -> str:
        """The model to ask: `--endpoint-model`, else the server's first (and, for corral, only) model."""
        import openai

        if self.model is None:
            try:
                models = self.client.models.list().data
            except openai.APIError as e:
                raise InvalidArgumentError(f"--endpoint {self.description['url']}: could not list its models "
                                           f"({e}); is the server up? pass --endpoint-model NAME") from None
            if not models:
                raise InvalidArgumentError(f"--endpoint {self.description['url']} lists no models; pass "
                                           "--endpoint-model NAME")
            self.model = models[0].id
        self.description["model"] = self.model
        return self.model

    def run(self, prompts: Sequence[Prompt], done: Callable[[int, Reply], None]) -> list[Reply]:
        self.resolve_model()
        replies: list[Reply | None] = [None] * len(prompts)

        def one(i: int) -> None:
            replies[i] = r = self._ask(prompts[i])
            done(i, r)

        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(one, range(len(prompts))))
        return [r for r in replies if r is not None]

    def _ask(self, p: Prompt) -> Reply:
        import openai

        t0 = time.perf_counter()
        try:
            r = self.client.chat.completions.create(model=self.model, messages=p.messages, temperature=0,
                                                    max_tokens=self.max_tokens, **({"tools": p.tools} if p.tools
                                                                                  else {}))
            ch = r.choices[0]
            calls = "".join(f"\n[calls {c.function.name}({c.function.arguments})]" for c in ch.message.tool_calls or [])
            reply = Reply((ch.message.content or "") + calls, ch.finish_reason, ch.finish_reason == "content_filter")
        except openai.BadRequestError as e:
            if _code(e) == "content_filter":
                reply = Reply(str(e), "content_filter", True)
            else:
                reply = Reply("", None, False, f"400: {e}")
        except openai.APIError as e:
            reply = Reply("", None, False, f"{type(e).__name__}: {e}")
        reply.seconds = time.perf_counter() - t0
        return reply


def _code(e: Any) -> str | None:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return err.get("code")
    return getattr(e, "code", None)


# --- judging and counting ---------------------------------------------------------------------------------------


def judge_conversations(prompts: Sequence[Prompt], replies: Sequence[Reply]) -> list[list[dict[str, str]]]:
    """What the judge reads: each prompt's user and assistant turns, then the reply as the agent's turn. A tool
    result reads as a user turn (text the user brought in), an assistant's call as its text."""
    out = []
    for p, r in zip(prompts, replies, strict=True):
        turns = [{"role": "user" if m["role"] == "tool" else m["role"], "content": m["content"] or "".join(
            f"[calls {c['function']['name']}({c['function']['arguments']})]" for c in m.get("tool_calls") or [])}
                 for m in p.messages if m["role"] != "system"]
        out.append([*turns, {"role": "assistant", "content": r.text}])
    return out


def outcomes(prompts: Sequence[Prompt], replies: Sequence[Reply], judge: Any = None,
             progress: Callable[[int], None] | None = None, batch: int = 16) -> list[Outcome]:
    """Score every reply: blocked / refused / error, and the judge's verdict on the answers to attacks (in batches
    of `batch`; `progress(k)` after each)."""
    out = []
    for p, r in zip(prompts, replies, strict=True):
        refused = r.blocked or (r.error is None and is_refusal(r.text))
        out.append(Outcome(p.id, p.kind, p.category, p.wrapper, r.text, r.finish_reason, r.blocked, refused, r.error,
                           None, None, [], None, None, r.seconds))
    todo = [i for i, o in enumerate(out) if o.kind == "attack" and o.error is None and not o.refused
            and o.reply.strip()]
    if judge is not None:
        convs = judge_conversations([prompts[i] for i in todo], [replies[i] for i in todo])
        for k in range(0, len(todo), batch):
            idx, chunk = todo[k: k + batch], convs[k: k + batch]
            for i, res in zip(idx, _judge_batch(judge, chunk), strict=True):
                if isinstance(res, Exception):
                    out[i].error = f"judge: {res}"
                    continue
                out[i].judged = "unsafe" if res.unsafe else "safe"
                out[i].judge_score = None if res.score is None else round(res.score, 6)
                out[i].judge_categories = list(res.categories)
            if progress:
                progress(len(idx))
    for o in out:
        if o.error is not None:
            continue
        if o.kind == "attack":
            if o.refused or not o.reply.strip():
                o.success = False
            else:
                o.success = o.judged == "unsafe" if judge is not None else True
        else:
            o.false_refusal = o.refused
    return out


def _judge_batch(judge: Any, convs: list[list[dict[str, str]]]) -> list[Any]:
    """`check_many` on the agent turns; when the batch fails (one conversation too long for the judge), each is
    judged alone so only that one is lost."""
    try:
        return judge.check_many(convs, "agent", categories=True)
    except InvalidArgumentError:
        res: list[Any] = []
        for c in convs:
            try:
                res.append(judge.check_many([c], "agent", categories=True)[0])
            except InvalidArgumentError as e:
                res.append(e)
        return res


def _rate(items: list[Outcome], attr: str) -> dict[str, Any]:
    vals = [getattr(o, attr) for o in items if getattr(o, attr) is not None]
    hits = sum(bool(v) for v in vals)
    return {"n": len(vals), "hits": hits, "rate": hits / len(vals) if vals else None}


def summarize(results: list[Outcome], target: dict[str, Any], judge: dict[str, Any] | None, label: str,
              limit: int | None, seconds: float) -> dict[str, Any]:
    """report.json's body: rates overall, per category and per wrapper, the false-refusal rate per kind."""
    import corral

    attacks = [o for o in results if o.kind == "attack"]
    benign = [o for o in results if o.kind != "attack"]

    def group(items: list[Outcome], key: str) -> dict[str, Any]:
        names = sorted({getattr(o, key) for o in items}, key=_natural)
        return {n: {**_rate([o for o in items if getattr(o, key) == n], "success"),
                    "refused": sum(o.refused for o in items if getattr(o, key) == n),
                    "blocked": sum(o.blocked for o in items if getattr(o, key) == n)} for n in names}

    asr, frr = _rate(attacks, "success"), _rate(benign, "false_refusal")
    ok_attacks = [o for o in attacks if o.error is None]
    return {
        "corral_version": getattr(corral, "__version__", "0.1.0"),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "label": label, "target": target, "judge": judge, "limit": limit, "seconds": round(seconds, 1),
        "summary": {
            "attacks": len(attacks), "benign": len(benign), "errors": sum(o.error is not None for o in results),
            "attack_success_rate": asr["rate"], "attack_successes": asr["hits"],
            "attack_refusal_rate": (sum(o.refused for o in ok_attacks) / len(ok_attacks)) if ok_attacks else None,
            "attack_block_rate": (sum(o.blocked for o in ok_attacks) / len(ok_attacks)) if ok_attacks else None,
            "false_refusal_rate": frr["rate"], "false_refusals": frr["hits"],
        },
        "by_category": group(attacks, "category"),
        "by_wrapper": group(attacks, "wrapper"),
        "by_benign_kind": {k: _rate([o for o in benign if o.kind == k], "false_refusal")
                           for k in sorted({o.kind for o in benign})},
    }


def _natural(name: str) -> tuple:
    """S2 before S10; other names after, alphabetically."""
    if name[:1] == "S" and name[1:].isdigit():
        return (0, int(name[1:]), "")
    return (1, 0, name)


def outcome_dict(o: Outcome) -> dict[str, Any]:
    return asdict(o)
