"""`Guard`: a loaded guard model checks conversations, one (`check`) or many together (`check_many`).

Two modes, one result type (`GuardResult`: the verdict, the decision, a score when there is one, the latency):

- generate (default): the model writes its verdict greedily (at most `max_tokens` tokens) and `parse_verdict`
  reads it. Conversations run through the batched `Engine` stepped on this thread; the engine is batch invariant, so
  a verdict does not depend on what else was checked with it (`check_many` == `check`, token for token).
- score: one forward pass; P(unsafe) is the probability of the first token of "unsafe" against that of "safe" at
  the first reply position, softmax over those two logits (the model card's "probability for the first token").
  The token ids are the first of `reply_ids(tok, "safe")` / `reply_ids(tok, "unsafe")`: each word tokenized right
  after the template's assistant prefix. Unsafe when P >= `threshold`. Categories are read only when asked
  (`categories=True`): a short greedy continuation after the forced "unsafe\\n".

Text that is not a verdict follows `on_parse_error` (fail_closed: unsafe; fail_open: safe) and is counted in
`Guard.parse_errors`, beside `Guard.checks`, for a metrics exporter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corral import jsonl
from corral.engine.sampling import SamplingParams
from corral.errors import InvalidArgumentError, TokenizerError
from corral.guard.llama_guard import (
    ASSESS,
    POLICIES,
    Verdict,
    is_unsafe,
    normalize_conversation,
    parse_verdict,
    prompt_ids,
    render_prompt,
    reply_ids,
    wrap_text,
)
from corral.guard.taxonomy import Taxonomy, default_taxonomy
from corral.model.llama import KVCache, LlamaForCausalLM
from corral.tokenizer import Tokenizer

MODES = ("generate", "score")


@dataclass
class GuardResult:
    """One conversation's check. `unsafe` is the decision: the verdict's, the threshold's in score mode, or the
    parse-error policy's for text that is not a verdict (`verdict.parsed` is False then)."""

    verdict: Verdict
    unsafe: bool
    score: float | None  # P(unsafe) from the first reply token (score mode); None in generate mode
    latency_s: float  # wall time until this result was ready (in check_many: since the batch started)
    mode: str
    prompt_tokens: int

    @property
    def categories(self) -> list[str]:
        return self.verdict.categories

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `corral guard --out` writes."""
        return {"verdict": "unsafe" if self.unsafe else "safe", "categories": self.verdict.categories,
                "unknown_codes": self.verdict.unknown_codes, "parsed": self.verdict.parsed,
                "score": None if self.score is None else round(self.score, 6), "raw": self.verdict.raw,
                "mode": self.mode, "prompt_tokens": self.prompt_tokens,
                "latency_ms": round(self.latency_s * 1000, 2)}


class Guard:
    """A guard model (any corral model that writes Llama Guard verdicts), its tokenizer and taxonomy."""

    def __init__(self, model: LlamaForCausalLM, tokenizer: Tokenizer, taxonomy: Taxonomy | None = None, *,
                 mode: str = "generate", threshold: float = 0.5, on_parse_error: str = "fail_closed",
                 max_tokens: int = 32, template: str | None = None, max_batch: int = 16,
                 max_seq_len: int = 4096, batch_tokens: int = 4096, prefix_cache: bool = True):
        if mode not in MODES:
            raise InvalidArgumentError(f"mode {mode!r}: expected generate or score")
        if on_parse_error not in POLICIES:
            raise InvalidArgumentError(f"on_parse_error {on_parse_error!r}: expected fail_closed or fail_open")
        if not 0.0 <= threshold <= 1.0:
            raise InvalidArgumentError(f"threshold {threshold}: expected a probability in [0, 1]")
        for name, v in (("max_tokens", max_tokens), ("max_batch", max_batch), ("batch_tokens", batch_tokens)):
            if v < 1:
                raise InvalidArgumentError(f"{name} must be >= 1")
        self.model, self.tok = model, tokenizer
        self.taxonomy = taxonomy or default_taxonomy()
        self.mode, self.threshold, self.on_parse_error = mode, threshold, on_parse_error
        self.max_tokens, self.template = max_tokens, template
        self.max_batch, self.batch_tokens = max_batch, batch_tokens
        self.max_seq_len = min(max_seq_len, model.config.max_position_embeddings)
        self.checks = 0  # conversations checked
        self.parse_errors = 0  # ... whose output was not a verdict (decided by on_parse_error)
        self.prefix_cache = prefix_cache  # score mode: keep the KV of the prompts' common beginning
        self._prefixes: dict[tuple[int, ...], list[torch.Tensor]] | None = None
        self._score_ids: tuple[int, int] | None = None
        self._unsafe_prefix: list[int] | None = None

    # --- prompts --------------------------------------------------------------------------------------------------

    def prompt_text(self, conversation: Any, assess: str = "auto") -> str:
        """The full prompt the model reads for a conversation (chat template included), e.g. to show a user."""
        return wrap_text(self.tok, render_prompt(conversation, self.taxonomy, assess), self.template)

    def prompt_ids(self, conversation: Any, assess: str = "auto") -> list[int]:
        """The token ids the model reads for a conversation (what `corral finetune --task guard` trains on)."""
        return prompt_ids(self.tok, conversation, self.taxonomy, assess, self.template)

    @property
    def score_ids(self) -> tuple[int, int]:
        """(safe, unsafe): the token ids whose logits the scorer compares."""
        if self._score_ids is None:
            safe, unsafe = reply_ids(self.tok, "safe", self.template), reply_ids(self.tok, "unsafe", self.template)
            if not safe or not unsafe or safe[0] == unsafe[0]:
                raise TokenizerError("this tokenizer starts 'safe' and 'unsafe' with the same token, so score mode "
                                     "cannot tell them apart; use --mode generate")
            self._score_ids = (safe[0], unsafe[0])
        return self._score_ids

    # --- checks ---------------------------------------------------------------------------------------------------

    def check(self, conversation: Any, assess: str = "auto", categories: bool = False) -> GuardResult:
        """Check one conversation (see `check_many`)."""
        return self.check_many([conversation], assess, categories)[0]

    def check_many(self, conversations: Sequence[Any], assess: str | Sequence[str] = "auto",
                   categories: bool = False) -> list[GuardResult]:
        """Check conversations together (batched); results in the same order. `assess` is one for all or one per
        conversation ("auto", "user", "agent"). `categories`: in score mode, also read the categories of those found
        unsafe (generate mode always reads them). Every conversation is rendered and checked before any model work.
        """
        n = len(conversations)
        if isinstance(assess, str):
            assess = [assess] * n
        if len(assess) != n:
            raise InvalidArgumentError(f"assess: {len(assess)} values for {n} conversations")
        prompts = []
        if self.mode == "generate":
            extra = self.max_tokens + 1
        else:  # the forward reads the prompt only; categories are a continuation after "unsafe\n"
            extra = self.max_tokens + 1 + len(self._unsafe_ids()) if categories else 0
        room = self.max_seq_len - extra
        for i, (conv, a) in enumerate(zip(conversations, assess, strict=True)):
            if a not in ASSESS:
                raise InvalidArgumentError(f"conversation {i}: assess {a!r}: expected one of {', '.join(ASSESS)}")
            try:
                ids = self.prompt_ids(conv, a)
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"conversation {i}: {e}") from None
            if len(ids) > room:
                raise InvalidArgumentError(f"conversation {i}: the guard prompt is {len(ids)} tokens; it must fit "
                                           f"{room} (context {self.max_seq_len} less the verdict's tokens): shorten "
                                           "the conversation or raise --max-seq-len")
            prompts.append(ids)
        if not prompts:
            return []
        if self.mode == "generate":
            results = self._check_generate(prompts)
        else:
            results = self._check_score(prompts, categories)
        self.checks += n
        self.parse_errors += sum(not r.verdict.parsed for r in results)
        return results

    def _check_generate(self, prompts: list[list[int]]) -> list[GuardResult]:
        outs = self._generate(prompts)
        results = []
        for ids, (text, latency) in zip(prompts, outs, strict=True):
            v = parse_verdict(text, self.taxonomy)
            results.append(GuardResult(v, is_unsafe(v, self.on_parse_error), None, latency, "generate", len(ids)))
        return results

    def _check_score(self, prompts: list[list[int]], categories: bool) -> list[GuardResult]:
        probs, done = self.unsafe_probability(prompts)
        flagged = [p >= self.threshold for p in probs]
        texts: dict[int, tuple[str, float]] = {}
        want = [i for i, f in enumerate(flagged) if f and categories]
        if want:
            prefix = self._unsafe_ids()
            outs = self._generate([prompts[i] + prefix for i in want])
            for i, (text, latency) in zip(want, outs, strict=True):  # generated after all were scored
                texts[i] = ("unsafe\n" + text, max(done) + latency)
        results = []
        for i, (ids, p) in enumerate(zip(prompts, probs, strict=True)):
            if i in texts:
                text, latency = texts[i]
                v = parse_verdict(text, self.taxonomy)
            else:
                v, latency = Verdict(not flagged[i], [], [], True, ""), done[i]
            results.append(GuardResult(v, flagged[i], p, latency, "score", len(ids)))
        return results

    def _unsafe_ids(self) -> list[int]:
        """The ids of "unsafe\\n" as the model writes them after the prompt: forced before reading categories."""
        if self._unsafe_prefix is None:
            self._unsafe_prefix = reply_ids(self.tok, "unsafe\n", self.template)
        return self._unsafe_prefix

    @torch.inference_mode()
    def unsafe_probability(self, prompts: list[list[int]]) -> tuple[list[float], list[float]]:
        """P(unsafe) for each prompt (token ids) from the logits at its last position, softmax over the (safe,
        unsafe) first tokens; and the seconds until each was ready.

        Every guard prompt begins with the same tokens up to its first turn (template, task, categories: ~80% of a
        short one), per assessed role. Their keys and values are computed once and kept (`prefix_cache`); each
        prompt then runs only its own tokens, right-padded in batches of at most `batch_tokens` tokens (prefix
        included: each row's cache holds it), the head computed at the last positions only. A prompt that does not
        start with a kept prefix runs whole.
        """
        safe_id, unsafe_id = self.score_ids
        t0 = time.perf_counter()  # the first call's latencies include computing the kept prefixes
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(prompts):
            groups.setdefault(self._prefix_of(ids), []).append(i)
        probs, done = [0.0] * len(prompts), [0.0] * len(prompts)
        for prefix, members in groups.items():
            P = len(prefix)
            order = sorted(members, key=lambda i: -len(prompts[i]))
            k = 0
            while k < len(order):
                T = len(prompts[order[k]]) - P
                idx = order[k: k + max(1, self.batch_tokens // (P + T))]  # the cache holds P + T per row
                k += len(idx)
                logits = self._last_logits([prompts[j][P:] for j in idx], prefix)  # (B, V)
                p = torch.softmax(logits[:, [safe_id, unsafe_id]], dim=-1)[:, 1].tolist()
                now = time.perf_counter() - t0
                for r, j in enumerate(idx):
                    probs[j], done[j] = p[r], now
        return probs, done

    def _last_logits(self, rows: list[list[int]], prefix: tuple[int, ...]) -> torch.Tensor:
        """The logits (B, V) at the last token of each row, every row read after the kept `prefix` (or none)."""
        dev, B, T, P = self.model.device, len(rows), max(len(r) for r in rows), len(prefix)
        ids = torch.zeros(B, T, dtype=torch.long)
        last = torch.tensor([len(r) - 1 for r in rows])
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        ids = ids.to(dev)
        if not P:  # right padding cannot reach earlier positions of a plain causal forward
            keep = torch.zeros(B, T, dtype=torch.bool)
            keep[torch.arange(B), last] = True
            return self.model(ids, keep=keep.to(dev)).float()
        cache = KVCache.allocate(self.model.config, B, P + T, self.model.dtype, dev)
        for buf, kept in zip(cache.k + cache.v, self._prefixes[prefix], strict=True):
            buf[:, :, :P] = kept  # (1, n_kv, P, hd) → every row
        pos = torch.arange(P, P + T, device=dev).expand(B, T)
        hidden = self.model(ids, pos, cache, kv_len=P + T, return_hidden=True)  # (B, T, H)
        return self.model.head(hidden[torch.arange(B, device=dev), last.to(dev)]).float()

    def _prefix_of(self, ids: list[int]) -> tuple[int, ...]:
        """The kept prefix `ids` starts with (computing the role prefixes on first use), or () for none."""
        if not self.prefix_cache:
            return ()
        if self._prefixes is None:
            self._prefixes = {}
            a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
            x = {"role": "assistant", "content": "a"}
            for one, two in ((a, b), ([*a, x], [*b, x])):  # 'User' and 'Agent' assessments
                ia, ib = self.prompt_ids(one), self.prompt_ids(two)
                n = next((i for i, (u, v) in enumerate(zip(ia, ib, strict=False)) if u != v), min(len(ia), len(ib)))
                if n >= 2:
                    self._prefixes[tuple(ia[:n])] = self._prefill(ia[:n])
        for prefix in self._prefixes:
            if len(ids) > len(prefix) and tuple(ids[: len(prefix)]) == prefix:
                return prefix
        return ()

    def _prefill(self, ids: list[int]) -> list[torch.Tensor]:
        """Keys and values (one (1, n_kv, P, hd) tensor per layer, keys then values) of `ids` at positions 0..P-1."""
        P, dev = len(ids), self.model.device
        cache = KVCache.allocate(self.model.config, 1, P, self.model.dtype, dev)
        with torch.inference_mode():
            self.model(torch.tensor([ids], device=dev), torch.arange(P, device=dev).view(1, P), cache, kv_len=P,
                       last_only=True)
        return [t[:, :, :P].clone() for t in cache.k + cache.v]

    def _generate(self, prompts: list[list[int]]) -> list[tuple[str, float]]:
        """Greedy replies (at most `max_tokens` tokens) through one `Engine` stepped on this thread: (text,
        seconds from the start until it finished) per prompt."""
        from corral.text import generate_many

        gens = generate_many(self.model, self.tok, prompts, SamplingParams(temperature=0.0, max_tokens=self.max_tokens),
                             max_batch=self.max_batch, max_seq_len=self.max_seq_len)
        errors = [f"conversation {i}: {g.error}" for i, g in enumerate(gens) if g.finish_reason == "error"]
        if errors:
            raise RuntimeError(f"the guard model failed: {errors[0]}")
        return [(g.text, g.seconds) for g in gens]


# --- conversation files (corral guard --conversation / --file) ----------------------------------------------------


class GuardFileError(InvalidArgumentError):
    """A conversation file or JSONL of conversations that cannot be read; the message names each bad line."""


@dataclass
class Row:
    """One conversation of a JSONL file: `{"id"?, "conversation": [...], "assess"?, "label"?, "categories"?}`
    (the bundled guard data's format; `messages` is accepted for `conversation`)."""

    id: Any
    conversation: list[dict[str, str]]
    assess: str
    fields: dict[str, Any]
    line: int


def read_conversation(path: str | Path) -> list[dict[str, str]]:
    """A JSON file holding one conversation: a list of messages, or an object with `conversation` (or `messages`)."""
    p = Path(path)
    if not p.is_file():
        raise GuardFileError(f"{p}: no such file; pass a JSON file with a list of {{role, content}} messages")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GuardFileError(f"{p}: not valid JSON ({e}); expected a list of {{role, content}} messages") from None
    conv = _conversation_of(obj)
    try:
        normalize_conversation(conv, "auto")
    except InvalidArgumentError as e:
        raise GuardFileError(f"{p}: {e}") from None
    return conv


def read_rows(path: str | Path, assess: str = "auto") -> list[Row]:
    """Every line of a JSONL file of conversations, checked; raises `GuardFileError` listing the bad lines.
    `assess` is for lines without their own."""

    def parse(obj: Any, n: int) -> Row:
        if not isinstance(obj, dict):
            raise InvalidArgumentError("expected an object with a 'conversation' list")
        conv = _conversation_of(obj)
        how = obj.get("assess", assess)
        normalize_conversation(conv, how)
        return Row(obj.get("id", n), conv, how, obj, n)

    return jsonl.read(path, parse, what='a JSONL file of {"conversation": [...]} lines', error=GuardFileError)[0]


def _conversation_of(obj: Any) -> Any:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for key in ("conversation", "messages"):
            if key in obj:
                return obj[key]
    raise InvalidArgumentError("expected a 'conversation' list of {role, content} messages")
