"""Structured output: JSON-schema / JSON-object constrained decoding, and tool-call grammars (eager or lazy), with
llguidance. The server, `corral batch` and the tool-call eval share it; the engine sees only `mask` and `accept`.

Why llguidance: it needs no torch (the matcher is Rust behind a small Python API), computes a token mask in tens of
microseconds even for 128k-token vocabularies (no per-grammar precompilation over the vocabulary), covers most of
JSON Schema, and is what llama.cpp and vLLM use, so a schema that works there works here.

One `GrammarCompiler` per tokenizer turns an OpenAI `response_format` into a factory of `Constraint`s (one per
request; the factory lets the server reject a bad schema with a 400 before queueing, and give each of n choices its
own matcher). The engine calls `Constraint.mask(logits_row)` before sampling and `accept(token_id)` after.

JSON is generated without free whitespace, with `json.dumps`-style separators (`{"a": 1, "b": [2, 3]}`): a small
model allowed any whitespace may emit newlines until `max_tokens`. A schema can opt out through llguidance's own
key, e.g. `"x-guidance": {"whitespace_flexible": true}`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import llguidance
import numpy as np
import torch

from corral.errors import InvalidArgumentError
from corral.tokenizer import Tokenizer

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# verbose_errors=False: a matcher error goes to the client, and must not carry the grammar or parser state.
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)
_SPECIAL = b"\xff"  # llguidance marks special tokens by this prefix (no UTF-8 text contains the byte)

_lltokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def lltokenizer(tok: Tokenizer) -> llguidance.LLTokenizer:
    """The llguidance view of `tok` (its token bytes, specials marked, every stop id an EOS); built once per
    tokenizer (~0.2 s for a 49k vocabulary)."""
    with _lock:
        if tok not in _lltokenizers:
            _lltokenizers[tok] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab(tok)),
                                                        eos_token=_eos_ids(tok) or None)
        return _lltokenizers[tok]


class _Vocab:
    """What `llguidance.TokenizerWrapper` reads: token bytes, EOS/BOS ids, and a text → ids callable."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self.tokens = [_SPECIAL + b if i in tok.special_ids else b for i, b in enumerate(tok.token_bytes())]
        eos = _eos_ids(tok)
        self.eos_token_id = eos[0] if eos else None
        self.bos_token_id = tok.bos_id

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):  # the wrapper passes UTF-8 it encoded itself
            text = text.decode("utf-8", errors="replace")
        return self._tok.encode(text)


def _eos_ids(tok: Tokenizer) -> list[int]:
    return sorted(set(tok.stop_ids) | ({tok.eos_id} if tok.eos_id is not None else set()))


class Constraint:
    """One request's grammar state: masks the next token's logits, advances on each accepted token."""

    def __init__(self, lltok: llguidance.LLTokenizer, grammar: str):
        self._m = llguidance.LLMatcher(lltok, grammar, log_level=0, limits=_LIMITS)
        self._lltok, self._n = lltok, lltok.vocab_size
        self._words = np.zeros((self._n + 31) // 32, dtype=np.int32)  # one bit per token, 1 = allowed
        self._error: str | None = None

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits (V,) of tokens the grammar forbids next to -inf, in place.

        V is the model's vocabulary: ids past the tokenizer's (padding rows) are forbidden; tokenizer ids past V
        cannot be sampled anyway. With nothing left to sample, `error` says so.
        """
        self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        v = logits.shape[-1]
        k = min(v, self._n)
        forbidden = np.unpackbits(np.bitwise_not(self._words).view(np.uint8), bitorder="little")[:k].view(np.bool_)
        if forbidden.all() and not self._m.is_error():
            self._error = "the grammar allows no token of the model's vocabulary"
        logits[:k].masked_fill_(torch.from_numpy(forbidden).to(logits.device), float("-inf"))
        if v > k:
            logits[k:] = float("-inf")

    def accept(self, token_id: int) -> None:
        """Advance past a sampled token (a token the mask forbade puts the matcher in its error state)."""
        self._m.consume_token(token_id)

    def accept_bytes(self, data: bytes) -> None:
        """Advance past text the model wrote before the grammar applied (`LazyConstraint`'s trigger on)."""
        self._m.consume_tokens(self._lltok.tokenize_bytes(data))

    @property
    def done(self) -> bool:
        """The grammar is complete and nothing but EOS may follow: the output can end here."""
        return self._m.is_stopped() and not self._m.is_error()

    @property
    def error(self) -> str | None:
        return self._m.get_error() or self._error or None


class LazyConstraint:
    """A grammar that applies only once the answer starts a tool call (llama.cpp's lazy grammar): until `trigger`
    appears (anywhere, or at the start after white space) every token is free; then the text from the trigger on
    is fed to the grammar, which constrains the rest of the answer."""

    def __init__(self, lltok: llguidance.LLTokenizer, grammar: str, trigger: str, anywhere: bool,
                 token_bytes: list[bytes]):
        self._lltok, self._grammar, self._bytes = lltok, grammar, token_bytes
        self._trigger, self._anywhere = trigger.encode(), anywhere
        self._buf, self._inner, self._off = b"", None, False

    def mask(self, logits: torch.Tensor) -> None:
        if self._inner is not None:
            self._inner.mask(logits)

    def accept(self, token_id: int) -> None:
        if self._inner is not None:
            self._inner.accept(token_id)
            return
        if self._off:
            return
        self._buf += self._bytes[token_id] if token_id < len(self._bytes) else b""
        if self._anywhere:
            at = self._buf.find(self._trigger)
        else:
            body = self._buf.lstrip()
            if body and not (body.startswith(self._trigger) or self._trigger.startswith(body)):
                self._off = True  # the answer began as prose: no call can follow
            at = len(self._buf) - len(body) if body.startswith(self._trigger) else -1
        if at >= 0:
            self._inner = Constraint(self._lltok, self._grammar)
            self._inner.accept_bytes(self._buf[at:])

    @property
    def done(self) -> bool:
        return self._inner is not None and self._inner.done

    @property
    def error(self) -> str | None:
        return self._inner.error if self._inner is not None else None


class GrammarCompiler:
    """Turns OpenAI `response_format` values into `Constraint` factories for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer):
        self.lltok = lltokenizer(tokenizer)
        self._tok = tokenizer
        self._text_bytes: list[bytes] | None = None  # token bytes with specials blank (lazy grammars), built once

    def tool_calls(self, tools: list[Any], grammar: str, trigger: str | None = None, anywhere: bool = True
                   ) -> Callable[[], Constraint | LazyConstraint]:
        """A factory of constraints to a tool-call grammar (`corral.tools.Dialect.grammar`) over `tools`
        (`corral.tools.Tool`s): from the first token, or, given the dialect's `trigger`, lazily. Raises
        `InvalidArgumentError` naming the tool whose parameters are not a JSON Schema llguidance can use."""
        for i, t in enumerate(tools):
            self.schema_grammar(t.parameters, f"tools[{i}].function.parameters")
        lark = llguidance.LLMatcher.grammar_from_lark(grammar)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(lark, self.lltok, limits=_LIMITS)
        if is_error:  # each schema passed alone: a grammar corral wrote is wrong
            raise RuntimeError(f"tool-call grammar: {messages[0]}")
        if trigger is None:
            return partial(Constraint, self.lltok, lark)
        if self._text_bytes is None:
            special = self._tok.special_ids
            self._text_bytes = [b"" if i in special else b for i, b in enumerate(self._tok.token_bytes())]
        return partial(LazyConstraint, self.lltok, lark, trigger, anywhere, self._text_bytes)

    def compile(self, response_format: dict[str, Any] | None) -> Callable[[], Constraint] | None:
        """`{"type": "text"}` (or None) → None; `{"type": "json_object"}` → any JSON object;
        `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}` → JSON valid against the schema.

        Raises `InvalidArgumentError` for a malformed `response_format` or a schema llguidance cannot use.
        Call the returned factory once per generated sequence.
        """
        if response_format is None:
            return None
        if not isinstance(response_format, dict):
            raise InvalidArgumentError("response_format must be an object with a 'type'")
        kind = response_format.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            schema: Any = {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise InvalidArgumentError(
                    "response_format.json_schema.schema must be a JSON Schema object, e.g. "
                    '{"type": "object", "properties": {...}}')
        else:
            raise InvalidArgumentError(
                f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}")
        return partial(Constraint, self.lltok, self.schema_grammar(schema, "response_format.json_schema.schema"))

    def schema_grammar(self, schema: dict[str, Any], where: str) -> str:
        """llguidance's grammar of JSON valid against `schema`; `InvalidArgumentError` naming `where` if llguidance
        cannot use it."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise InvalidArgumentError(f"{where} is not usable JSON: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltok, limits=_LIMITS)
        if is_error:
            raise InvalidArgumentError(f"{where} is not a valid or supported JSON Schema: {messages[0]}")
        return grammar
