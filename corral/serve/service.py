"""OpenAI requests → engine requests → OpenAI responses, without HTTP (the app and `corral batch` share it).

Everything that can be wrong with a request is checked before it reaches the engine (model name, sampling values,
prompt length, schema), so it fails as a 4xx, never mid-stream; the shields run here. Running the jobs is
`bridge.py`'s, formatting the answers `responses.py`'s, and a stream's events `stream.py`'s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.chat import encode_chat, template_source
from corral.engine.engine import Engine, Finished, Request, embed, prompt_logprobs
from corral.engine.sampling import SamplingParams
from corral.errors import InvalidArgumentError
from corral.serve import protocol as P
from corral.serve.bridge import Hooks, Job, collect, submit
from corral.serve.errors import ContentFilterError, ModelNotServedError, ModerationUnavailableError, ParamError, to_ids
from corral.serve.responses import chat_logprobs, chunk_sse, completion_logprobs, new_id, reason, sse, usage
from corral.serve.stream import events, filtered
from corral.text import Delta
from corral.tokenizer import Tokenizer
from corral.tools import (
    CallStream,
    Dialect,
    Tool,
    ToolCall,
    ToolChoice,
    check_choice,
    check_message_calls,
    check_tools,
    dialect_for,
)


class ToolPlan:
    """A request's tool calling: the dialect its calls are written in, its tools and its `tool_choice`."""

    def __init__(self, dialect: Dialect, tools: list[Tool], choice: ToolChoice):
        self.dialect, self.tools, self.choice = dialect, tools, choice

    def answer(self, text: str, ev: Finished) -> tuple[str | None, list[ToolCall], str]:
        """(content, calls, finish_reason) of a finished answer; a shield's refusal holds no calls."""
        if ev.finish_reason == "content_filter":
            return text, [], reason(ev)
        content, calls = self.dialect.parse(text)
        return content, calls, call_reason(calls, ev)


def call_reason(calls: list[ToolCall], ev: Finished) -> str:
    """finish_reason "tool_calls" when an answer that ended well made calls."""
    return "tool_calls" if calls and ev.finish_reason == "stop" else reason(ev)


class Service:
    """The served model behind the OpenAI API: one engine, one tokenizer, one name (plus aliases)."""

    def __init__(self, engine: Engine, tok: Tokenizer, model_id: str, aliases: tuple[str, ...] = (),
                 hooks: Hooks | None = None,
                 chat_template: str | None = None, shields: Any = None, guard_id: str | None = None):
        self.engine, self.tok = engine, tok  # the engine knows token ids; text is this side's
        self.model_id, self.aliases = model_id, {model_id, *aliases}
        self.hooks = hooks or Hooks()
        self.chat_template = chat_template
        self.created = int(time.time())
        self._grammar = None
        # `shields`: a corral.guard.shields.Shields (corral serve --guard / --injection-shield), or None
        self.shields = shields
        self.guard_id = guard_id
        if shields is not None:
            shields.hooks = self.hooks

    @property
    def max_model_len(self) -> int:
        return self.engine.max_seq_len

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.aliases:
            raise ModelNotServedError(f"the model '{name}' does not exist on this server; it serves "
                                      f"'{self.model_id}' (GET /v1/models)")

    # --- request → jobs ------------------------------------------------------------------------------------

    def _params(self, r: P._Sampling, prompt_len: int, max_tokens: int | None) -> SamplingParams:
        if r.presence_penalty or r.frequency_penalty:
            raise ParamError("presence_penalty and frequency_penalty are not supported; use repetition_penalty",
                             "presence_penalty" if r.presence_penalty else "frequency_penalty")
        room = self.max_model_len - prompt_len
        if max_tokens is not None and max_tokens > room:
            raise ParamError(f"this model's maximum context length is {self.max_model_len} tokens; the prompt has "
                             f"{prompt_len} tokens and max_tokens asks for {max_tokens} more; lower max_tokens or "
                             f"shorten the prompt", "max_tokens", "context_length_exceeded")
        stops = r.stop_list()
        if any(not s for s in stops):
            raise ParamError("stop strings must not be empty", "stop")
        bias: dict[int, float] = {}
        vocab = self.engine.model.config.vocab_size
        for key, value in (r.logit_bias or {}).items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab:
                raise ParamError(f"logit_bias: {key!r} is not a token id of this model (0..{vocab - 1})",
                                 "logit_bias")
            if not -100 <= value <= 100:
                raise ParamError(f"logit_bias[{key}] = {value} is outside [-100, 100]", "logit_bias")
            bias[int(key)] = float(value)
        return SamplingParams(
            temperature=1.0 if r.temperature is None else r.temperature, top_p=r.top_p or 1.0, top_k=r.top_k or 0,
            min_p=r.min_p or 0.0, repetition_penalty=r.repetition_penalty or 1.0,
            max_tokens=max_tokens or room, stop=stops, seed=r.seed, ignore_eos=r.ignore_eos, logit_bias=bias)

    def _check_prompt(self, ids: list[int], param: str) -> None:
        if not ids:
            raise ParamError("the prompt is empty", param)
        if len(ids) >= self.max_model_len:
            raise ParamError(f"this model's maximum context length is {self.max_model_len} tokens; the prompt has "
                             f"{len(ids)} tokens; shorten it", param, "context_length_exceeded")
        bad = next((i for i in ids if not 0 <= i < self.engine.model.config.vocab_size), None)
        if bad is not None:
            raise ParamError(f"token id {bad} is outside the vocabulary (0..{self.engine.model.config.vocab_size - 1})",
                             param)

    def chat_jobs(self, r: P.ChatCompletionRequest) -> tuple[list[Job], ToolPlan | None]:
        self.check_model(r.model)
        if r.functions:
            raise ParamError("functions (OpenAI's deprecated form) is not supported; send them as tools: "
                             '[{"type": "function", "function": {"name": ..., "parameters": {...}}}]', "functions")
        plan, prompt, kwargs = self._tools(r)
        ids = to_ids(lambda: encode_chat(self.tok, prompt, template=self.chat_template, **kwargs), "messages")
        self._check_prompt(ids, "messages")
        top = r.top_logprobs if r.logprobs else None
        if r.top_logprobs is not None and not r.logprobs:
            raise ParamError("top_logprobs needs logprobs: true", "top_logprobs")
        params = self._params(r, len(ids), r.max_completion_tokens or r.max_tokens)
        factory = self._constraint_factory(r.response_format)
        if plan is not None:
            if factory is not None:
                raise ParamError("response_format cannot be combined with tools (a call's arguments follow its "
                                 "function's schema already); leave one out", "response_format")
            factory = self._tools_factory(plan, r.parallel_tool_calls)
        jobs = []
        for i in range(r.n):
            p = params if params.seed is None else SamplingParams(**{**params.__dict__, "seed": params.seed + i})
            jobs.append(Job(i, ids, p, top if top is not None else (0 if r.logprobs else None),
                            factory() if factory else None))
        return jobs, plan

    def _tools(self, r: P.ChatCompletionRequest) -> tuple[ToolPlan | None, list[dict[str, Any]], dict[str, Any]]:
        """The request's tool plan (None: no calls can be made), and the messages and template variables that
        put its tools and past calls into the prompt."""
        msgs = _messages(r)
        tools = _param(lambda: check_tools(r.tools), "tools") if r.tools is not None else []
        if r.tool_choice is not None and not tools:
            raise ParamError("tool_choice needs tools", "tool_choice")
        choice = _param(lambda: check_choice(r.tool_choice, tools), "tool_choice") if tools else ToolChoice("none")
        for i, m in enumerate(msgs):
            if m.get("tool_calls"):
                _param(lambda i=i, m=m: check_message_calls(m["tool_calls"], f"messages[{i}].tool_calls"),
                       "messages")
        history = any(m.get("tool_calls") or m["role"] == "tool" for m in msgs)
        if choice.mode == "none" and not history:
            return None, msgs, {}
        dialect, native = dialect_for(template_source(self.tok, self.chat_template))
        shown = tools if choice.mode != "none" else []
        prompt, kwargs = dialect.prompt(msgs, shown, r.parallel_tool_calls, native)
        return (ToolPlan(dialect, tools, choice) if shown else None), prompt, kwargs

    def _tools_factory(self, plan: ToolPlan, parallel: bool) -> Callable[[], Any]:
        grammar = plan.dialect.grammar(plan.tools, plan.choice, parallel)
        trigger = plan.dialect.trigger if plan.choice.mode == "auto" else None
        try:
            return self._compiler().tool_calls(plan.tools, grammar, trigger, plan.dialect.anywhere)
        except InvalidArgumentError as e:
            raise ParamError(str(e), "tools") from None

    def _compiler(self) -> Any:
        if self._grammar is None:
            from corral.grammar import GrammarCompiler

            self._grammar = GrammarCompiler(self.tok)
        return self._grammar

    def completion_jobs(self, r: P.CompletionRequest) -> tuple[list[Job], list[list[int]]]:
        self.check_model(r.model)
        if r.suffix:
            raise ParamError("suffix (fill-in-the-middle) is not supported", "suffix")
        p = r.prompt
        if isinstance(p, str):
            prompts = [to_ids(lambda: self.tok.encode(p, add_bos=self.tok.add_bos), "prompt")]
        elif p and all(isinstance(x, str) for x in p):
            prompts = [to_ids(lambda x=x: self.tok.encode(x, add_bos=self.tok.add_bos), "prompt") for x in p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        elif p and all(isinstance(x, list) for x in p):
            prompts = [list(x) for x in p]
        else:
            raise ParamError("prompt must be a string, a list of strings, a list of token ids or a list of such "
                             "lists, and not empty", "prompt")
        if len(prompts) * r.n > 64:
            raise ParamError("at most 64 completions per request (prompts x n)", "n")
        jobs = []
        for k, ids in enumerate(prompts):
            self._check_prompt(ids, "prompt")
            params = self._params(r, len(ids), r.max_tokens if r.max_tokens is not None else 16)
            for j in range(r.n):
                pj = params if params.seed is None else SamplingParams(**{**params.__dict__, "seed": params.seed + j})
                jobs.append(Job(k * r.n + j, ids, pj, r.logprobs))
        return jobs, prompts

    def _constraint_factory(self, fmt: P.ResponseFormat | None) -> Callable[[], Any] | None:
        if fmt is None or fmt.type == "text":
            return None
        spec: dict[str, Any] = {"type": fmt.type}
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise ParamError("response_format.json_schema is required with type json_schema",
                                 "response_format.json_schema")
            spec["json_schema"] = {"name": fmt.json_schema.name, "schema": fmt.json_schema.schema_,
                                   "strict": fmt.json_schema.strict}
        try:
            return self._compiler().compile(spec)
        except InvalidArgumentError as e:
            raise ParamError(str(e), "response_format") from None

    # --- running jobs --------------------------------------------------------------------------------------

    # --- chat ----------------------------------------------------------------------------------------------

    async def chat(self, r: P.ChatCompletionRequest) -> P.ChatCompletion:
        jobs, plan = self.chat_jobs(r)
        msgs = _messages(r)
        if await self._input_blocked([msgs], "messages", "chat", jobs):
            texts, lps = [self.shields.refusal] * len(jobs), [[] for _ in jobs]
            done = {j.index: filtered(j) for j in jobs}
        else:
            texts, lps, done = await collect(self.engine, self.tok, self.hooks, jobs, "chat")
            await self._shield_answers([msgs] * len(jobs), texts, lps, done, "messages")
        choices = []
        for i in range(len(jobs)):
            content, calls, why = (plan.answer(texts[i], done[i]) if plan is not None
                                   else (texts[i], [], reason(done[i])))
            message = P.AssistantMessage(content=content, tool_calls=[P.ToolCallOut(**c.openai()) for c in calls]
                                         or None)
            choices.append(P.ChatChoice(index=i, message=message, finish_reason=why,
                                        logprobs=chat_logprobs(self.tok, lps[i]) if r.logprobs else None))
        return P.ChatCompletion(id=new_id("chatcmpl"), model=self.model_id, choices=choices,
                                usage=usage(jobs, done))

    async def chat_stream(self, r: P.ChatCompletionRequest) -> AsyncIterator[str]:
        """Validates, runs the input shields and queues at once (raising on bad input or, with `--shield-action
        error`, on a blocked one); the returned iterator yields SSE lines."""
        jobs, plan = self.chat_jobs(r)
        msgs = _messages(r)
        q, reqs = await self._submit_shielded(jobs, [msgs], "messages", "chat")
        calls = {job.index: CallStream(plan.dialect) for job in jobs} if plan is not None else None
        include_usage = bool(r.stream_options and r.stream_options.include_usage)
        cid = new_id("chatcmpl")

        def chunk(choices: list[P.ChunkChoice], u: P.Usage | None = None) -> str:
            c = P.ChatCompletionChunk(id=cid, model=self.model_id, choices=choices, usage=u)
            return chunk_sse(c, include_usage)

        head = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model_id,
                **({"usage": None} if include_usage else {})}

        async def opening() -> AsyncIterator[str]:
            for job in jobs:
                yield chunk([P.ChunkChoice(index=job.index, delta=P.DeltaMessage(role="assistant", content=""))])

        def delta(i: int, ev: Delta) -> str | None:
            text = calls[i].feed(ev.text) if calls is not None else ev.text  # a call's text is held until its end
            if ev.logprobs and r.logprobs:
                lp = chat_logprobs(self.tok, ev.logprobs)
                return chunk([P.ChunkChoice(index=i, delta=P.DeltaMessage(content=text), logprobs=lp)])
            if text:  # the common case, built without pydantic: it runs per token per stream
                return sse(json.dumps({**head, "choices": [{"index": i, "delta": {"content": text},
                                                             "logprobs": None, "finish_reason": None}]},
                                       ensure_ascii=False, separators=(",", ":")))
            return None

        def finish(i: int, ev: Finished) -> str:
            if calls is None:
                return chunk([P.ChunkChoice(index=i, delta=P.DeltaMessage(), finish_reason=reason(ev))])
            rest, made = calls[i].finish()
            made = [] if ev.finish_reason == "content_filter" else made
            why = call_reason(made, ev)
            lines = chunk([P.ChunkChoice(index=i, delta=P.DeltaMessage(content=rest))]) if rest else ""
            for k, c in enumerate(made):  # as OpenAI streams a call: id and name first, then the arguments
                lines += chunk([P.ChunkChoice(index=i, delta=P.DeltaMessage(tool_calls=[
                    {"index": k, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]))])
                lines += chunk([P.ChunkChoice(index=i, delta=P.DeltaMessage(tool_calls=[
                    {"index": k, "function": {"arguments": c.arguments}}]))])
            return lines + chunk([P.ChunkChoice(index=i, delta=P.DeltaMessage(), finish_reason=why)])

        usage_line = (lambda u: chunk([], u)) if include_usage else None
        shielded = [msgs] * len(jobs) if reqs and self.shields is not None and self.shields.output else None
        return events(self.engine, self.shields, jobs, q, reqs, opening(), delta, finish, usage_line, shielded)

    # --- shields -------------------------------------------------------------------------------------------

    async def _input_blocked(self, convs: list[list[dict[str, str]]], param: str, endpoint: str,
                             jobs: list[Job]) -> bool:
        """Run the input shields (injection, guard) on the request's conversations (a chat's one, or a completion
        request's prompts): False to go on; True to answer with refusals; raises `ContentFilterError` with
        `--shield-action error`. One flagged prompt blocks the whole request."""
        if self.shields is None:
            return False
        block = await self.shields.check_inputs(convs)
        if block is None:
            return False
        if self.shields.action == "error":
            raise ContentFilterError(f"{block.describe(self.shields.names)}; the request was not answered", param)
        for job in jobs:
            self.hooks.on_finished(endpoint, filtered(job), 0.0)
        return True

    async def _submit_shielded(self, jobs: list[Job], convs: list[list[dict[str, str]]], param: str,
                               endpoint: str) -> tuple[asyncio.Queue, list[Request]]:
        """`submit`, after the input shields: a blocked request (refuse) gets a queue that already holds each
        choice's refusal and content_filter end, and no engine requests."""
        if await self._input_blocked(convs, param, endpoint, jobs):
            q: asyncio.Queue = asyncio.Queue()
            for job in jobs:
                q.put_nowait((job.index, Delta(self.shields.refusal, [])))
                q.put_nowait((job.index, filtered(job)))
            return q, []
        return submit(self.engine, self.tok, self.hooks, jobs, endpoint)

    async def _shield_answers(self, convs: list[list[dict[str, str]]], texts: list[str], lps: list[list],
                              done: dict[int, Finished], param: str) -> None:
        """The output shield on finished answers (non-streaming): a blocked one becomes the refusal with
        finish_reason content_filter, in place; raises `ContentFilterError` with `--shield-action error`."""
        if self.shields is None or not self.shields.output:
            return
        blocks = await self.shields.check_output(list(zip(convs, texts, strict=True)))
        for i, block in enumerate(blocks):
            if block is None:
                continue
            if self.shields.action == "error":
                raise ContentFilterError(f"{block.describe(self.shields.names)}; the answer was withheld")
            texts[i], lps[i] = self.shields.refusal, []
            ev = done[i]
            done[i] = Finished("content_filter", ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)

    # --- completions ---------------------------------------------------------------------------------------

    async def complete(self, r: P.CompletionRequest) -> P.Completion:
        jobs, prompts = self.completion_jobs(r)
        convs = self._prompt_convs(jobs)
        if await self._input_blocked(_distinct(convs), "prompt", "completions", jobs):
            texts, lps = [self.shields.refusal] * len(jobs), [[] for _ in jobs]
            done = {j.index: filtered(j) for j in jobs}
        else:
            texts, lps, done = await collect(self.engine, self.tok, self.hooks, jobs, "completions")
            await self._shield_answers(convs, texts, lps, done, "prompt")
        echo_lps = await self._echo_logprobs(r, prompts)
        choices = []
        for job in jobs:
            prefix = self.tok.decode(job.prompt_ids) if r.echo else ""
            lp = None
            if r.logprobs is not None and done[job.index].finish_reason != "content_filter":
                lp = completion_logprobs(self.tok, lps[job.index], len(prefix))
                if r.echo:
                    head = completion_logprobs(self.tok, echo_lps[job.index // r.n], 0, job.prompt_ids)
                    lp = P.CompletionLogprobs(**{f: getattr(head, f) + getattr(lp, f) for f in
                                                 ("tokens", "token_logprobs", "top_logprobs", "text_offset")})
            choices.append(P.CompletionChoice(index=job.index, text=prefix + texts[job.index],
                                              finish_reason=reason(done[job.index]), logprobs=lp))
        return P.Completion(id=new_id("cmpl"), model=self.model_id, choices=choices, usage=usage(jobs, done))

    async def _echo_logprobs(self, r: P.CompletionRequest, prompts: list[list[int]]) -> list[list]:
        if not (r.echo and r.logprobs is not None):
            return []
        k = r.logprobs
        return [await asyncio.wrap_future(self.engine.call(lambda ids=ids: prompt_logprobs(self.engine.model, ids, k)))
                for ids in prompts]

    def _prompt_convs(self, jobs: list[Job]) -> list[list[dict[str, str]]]:
        """Each completion job's prompt as the guard reads it: one user message (token-id prompts decoded)."""
        if self.shields is None:
            return [[] for _ in jobs]
        return [[{"role": "user", "content": self.tok.decode(j.prompt_ids)}] for j in jobs]

    async def complete_stream(self, r: P.CompletionRequest) -> AsyncIterator[str]:
        jobs, prompts = self.completion_jobs(r)
        convs = self._prompt_convs(jobs)
        q, reqs = await self._submit_shielded(jobs, _distinct(convs), "prompt", "completions")
        include_usage = bool(r.stream_options and r.stream_options.include_usage)
        cid = new_id("cmpl")

        def chunk(choices: list[P.CompletionChoice], u: P.Usage | None = None) -> str:
            return chunk_sse(P.Completion(id=cid, model=self.model_id, choices=choices, usage=u), include_usage)

        offsets = [0] * len(jobs)

        async def opening() -> AsyncIterator[str]:
            if not r.echo:
                return
            echo_lps = await self._echo_logprobs(r, prompts)
            for job in jobs:
                text = self.tok.decode(job.prompt_ids)
                offsets[job.index] = len(text)
                lp = completion_logprobs(self.tok, echo_lps[job.index // r.n], 0, job.prompt_ids) if echo_lps else None
                yield chunk([P.CompletionChoice(index=job.index, text=text, finish_reason=None, logprobs=lp)])

        def delta(i: int, ev: Delta) -> str | None:
            if not (ev.text or ev.logprobs):
                return None
            lp = completion_logprobs(self.tok, ev.logprobs or [], offsets[i]) if r.logprobs is not None else None
            offsets[i] += len(ev.text)
            return chunk([P.CompletionChoice(index=i, text=ev.text, finish_reason=None, logprobs=lp)])

        def finish(i: int, ev: Finished) -> str:
            return chunk([P.CompletionChoice(index=i, text="", finish_reason=reason(ev))])

        usage_line = (lambda u: chunk([], u)) if include_usage else None
        shielded = convs if reqs and self.shields is not None and self.shields.output else None
        return events(self.engine, self.shields, jobs, q, reqs, opening(), delta, finish, usage_line, shielded)

    # --- moderations --------------------------------------------------------------------------------------

    async def moderate(self, r: P.ModerationRequest) -> P.ModerationResponse:
        """OpenAI's moderation endpoint, answered by the guard (see corral/guard/moderation.py for the category
        mapping and the scores)."""
        from corral.guard.moderation import moderation_result

        if self.shields is None or self.shields.guard is None:
            raise ModerationUnavailableError("this server has no guard model, so /v1/moderations is off; start it "
                                             "with `corral serve MODEL --guard GUARD_MODEL`")
        guard_id = self.guard_id or self.shields.name
        if r.model is not None and r.model != guard_id and not r.model.startswith(("omni-moderation",
                                                                                   "text-moderation")):
            raise ModelNotServedError(f"the moderation model '{r.model}' does not exist on this server; its guard "
                                      f"is '{guard_id}' (or leave model out)")
        x = r.input
        if isinstance(x, str):
            texts = [x]
        elif all(isinstance(t, str) for t in x):
            texts = list(x)
        else:
            if any(p.type != "text" or p.text is None for p in x):
                raise ParamError("only text inputs can be moderated here ({\"type\": \"text\", \"text\": ...}); "
                                 "the guard reads no images", "input")
            texts = [p.text for p in x]
        if not texts or len(texts) > 64:
            raise ParamError("input must hold 1 to 64 texts", "input")
        results = await self.shields.moderate(texts)
        taxonomy = self.shields.guard.taxonomy
        return P.ModerationResponse(id=new_id("modr"), model=guard_id,
                                    results=[P.ModerationResult(**moderation_result(res, taxonomy))
                                             for res in results])

    # --- embeddings, tokens --------------------------------------------------------------------------------

    async def embed(self, r: P.EmbeddingRequest) -> P.EmbeddingList:
        """Mean-pooled, L2-normalised final hidden states of the decoder (see the app's route docs)."""
        self.check_model(r.model)
        x = r.input
        if isinstance(x, str):
            inputs = [to_ids(lambda: self.tok.encode(x), "input")]
        elif x and all(isinstance(s, str) for s in x):
            inputs = [to_ids(lambda s=s: self.tok.encode(s), "input") for s in x]
        elif x and all(isinstance(t, int) for t in x):
            inputs = [list(x)]
        elif x and all(isinstance(t, list) for t in x):
            inputs = [list(t) for t in x]
        else:
            raise ParamError("input must be a string, a list of strings or token ids, and not empty", "input")
        if len(inputs) > 256:
            raise ParamError("at most 256 inputs per request", "input")
        for ids in inputs:
            self._check_prompt(ids, "input")
        hidden = self.engine.model.config.hidden_size
        if r.dimensions is not None and r.dimensions > hidden:
            raise ParamError(f"dimensions must be <= {hidden} for this model", "dimensions")
        model = self.engine.model
        vecs = await asyncio.wrap_future(self.engine.call(lambda: [embed(model, ids, r.dimensions) for ids in inputs]))
        data = []
        for i, v in enumerate(vecs):
            emb: list[float] | str = (base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
                                      if r.encoding_format == "base64" else v.tolist())
            data.append(P.Embedding(index=i, embedding=emb))
        n = sum(len(ids) for ids in inputs)
        return P.EmbeddingList(data=data, model=self.model_id, usage=P.EmbeddingUsage(prompt_tokens=n, total_tokens=n))

    def tokenize(self, r: P.TokenizeRequest) -> P.TokenizeResponse:
        self.check_model(r.model)
        if (r.prompt is None) == (r.messages is None):
            raise ParamError("give exactly one of prompt or messages", "prompt")
        if r.messages is not None:
            ids = to_ids(lambda: encode_chat(self.tok, _messages(r), add_generation_prompt=r.add_generation_prompt,
                                              template=self.chat_template), "messages")
        else:
            ids = to_ids(lambda: self.tok.encode(r.prompt, add_bos=r.add_special_tokens and self.tok.add_bos),
                          "prompt")
        return P.TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.max_model_len)

    def detokenize(self, r: P.DetokenizeRequest) -> P.DetokenizeResponse:
        self.check_model(r.model)
        vocab = self.tok.vocab_size
        bad = next((t for t in r.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise ParamError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", "tokens")
        return P.DetokenizeResponse(prompt=self.tok.decode(r.tokens, skip_special=False))

def _messages(r: P.ChatCompletionRequest | P.TokenizeRequest) -> list[dict[str, Any]]:
    """A request's messages as the chat template (and the guard) read them: developer messages are system ones;
    an assistant's past `tool_calls` and a tool message's `tool_call_id` kept."""
    out = []
    for m in r.messages:
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls is not None:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _param(check: Callable[[], Any], param: str) -> Any:
    """`check()`, its `InvalidArgumentError` a 400 naming `param`."""
    try:
        return check()
    except InvalidArgumentError as e:
        raise ParamError(str(e), param) from None


def _distinct(convs: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
    """The distinct prompts of a completion request (its n choices share one)."""
    seen, out = set(), []
    for conv in convs:
        key = json.dumps(conv)
        if key not in seen:
            seen.add(key)
            out.append(conv)
    return out


