"""Fine-tuning data: JSONL → validated, tokenized examples with a loss mask → optional packing and a held-out split.

Two line formats:
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`, rendered with the model's
  chat template; the loss covers the assistant turns only (their content and the template's end-of-turn tokens);
- completion: `{"prompt": "...", "completion": "..."}`, plain text (no template); the loss covers the completion
  and the end-of-sequence token.

Every line is checked before any training starts, and every bad line is reported by number (bad JSON, unknown
role, empty content, nothing to learn, too long); the run stops unless `skip_bad_lines`.

The assistant mask comes from rendering growing prefixes of the conversation: the tokens a template adds between
"the conversation up to this assistant turn, with the generation prompt" and "the conversation including it" are
that turn. This needs the template to render a conversation's prefix as a prefix of the whole, which chat
templates do (ChatML, Llama 3); a template that does not is reported as an error, not silently mis-masked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corral import jsonl
from corral.chat import encode_chat, template_source, validate_messages
from corral.errors import DataError, InvalidArgumentError
from corral.tokenizer import Tokenizer
from corral.tools import tool_conversation

IGNORE = -100  # label of a position that carries no loss (PyTorch's cross_entropy ignore_index)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # input_ids where the loss applies, IGNORE elsewhere; aligned as in HF (the loss shifts)
    line: int  # 1-based line number in its file
    anchor: bool = False  # held to the base model's next-token distributions (KL), not to its labels (CE)

    @property
    def trained_tokens(self) -> int:
        return sum(t != IGNORE for t in self.labels)


@dataclass
class Packed:
    """Several examples in one row of `seq_len` tokens. Positions restart at each example and `doc_ids` tell them
    apart, so attention must be block-diagonal (the training loop builds that mask); padding has doc_id -1."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    doc_ids: list[int]
    anchor: bool = False  # every example in the row is an anchor (`pack(..., anchor=True)`)


def load_jsonl(path: str | Path, tok: Tokenizer, max_len: int, template: str | None = None,
               skip_bad_lines: bool = False) -> tuple[list[Example], list[str]]:
    """Read and tokenize every line of `path`. Returns (examples, problems); raises `DataError` listing all bad
    lines unless `skip_bad_lines`, in which case they are left out and returned as `problems`. Lines over
    `max_len` tokens make the error say which --max-seq-len would take them all."""
    longest = 0

    def parse(obj: Any, n: int) -> Example:
        nonlocal longest
        ex = encode_example(obj, tok, template, n)
        if len(ex.input_ids) > max_len:
            longest = max(longest, len(ex.input_ids))
            raise ValueError(f"{len(ex.input_ids)} tokens, over the limit of {max_len} (--max-seq-len)")
        return ex

    what = "a JSONL file of chat or prompt/completion lines"
    examples, problems = jsonl.read(path, parse, what=what, skip_bad=True, allow_empty=True)
    if problems and not skip_bad_lines:
        fix = "fix them or pass --skip-bad-lines"
        if longest:
            fix = f"pass --max-seq-len {-(-longest // 64) * 64} (the longest line has {longest} tokens), {fix}"
        raise DataError(jsonl.bad_lines(path, problems, fix))
    if not examples:
        raise DataError(f"{path}: no usable lines; pass {what}")
    return examples, problems


def encode_example(obj: Any, tok: Tokenizer, template: str | None = None, line: int = 0) -> Example:
    """One JSONL line's object → `Example`; raises ValueError with a message fit for the user."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with 'messages', or with 'prompt' and 'completion'")
    if "messages" in obj:
        return encode_chat_example(obj["messages"], tok, template, line, obj.get("tools"))
    if "prompt" in obj or "completion" in obj:
        return encode_completion(obj.get("prompt"), obj.get("completion"), tok, line)
    raise ValueError("expected a 'messages' list, or 'prompt' and 'completion' strings")


def encode_chat_example(messages: Any, tok: Tokenizer, template: str | None = None, line: int = 0,
                        tools: Any = None) -> Example:
    """A chat row; with `tools` (OpenAI's list) or tool calls and results in the conversation, the tools and
    calls go into the prompt as the server puts them (`corral.tools`), and the loss covers the assistant's calls
    as written in the model's dialect."""
    _check_messages(messages)
    kwargs: dict[str, Any] = {}
    if tools is not None or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        messages, kwargs = tool_conversation(validate_messages(messages), tools, template_source(tok, template))
    ids = encode_chat(tok, messages, add_generation_prompt=False, template=template, **kwargs)
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = encode_chat(tok, messages[:i], add_generation_prompt=True, template=template, **kwargs)
        through = encode_chat(tok, messages[: i + 1], add_generation_prompt=False, template=template, **kwargs)
        if ids[: len(through)] != through or through[: len(before)] != before:
            raise ValueError("the chat template does not render a conversation's beginning as the beginning of the "
                             "whole conversation, so assistant turns cannot be masked; use another --chat-template")
        labels[len(before): len(through)] = through[len(before):]
    return Example(ids, labels, line)


def encode_completion(prompt: Any, completion: Any, tok: Tokenizer, line: int = 0) -> Example:
    for name, v in (("prompt", prompt), ("completion", completion)):
        if not isinstance(v, str):
            raise ValueError(f"'{name}' must be a string")
    if not completion.strip():
        raise ValueError("'completion' is empty: nothing to learn")
    p = tok.encode(prompt, add_bos=tok.add_bos)
    c = tok.encode(completion) + ([tok.eos_id] if tok.eos_id is not None else [])
    return Example(p + c, [IGNORE] * len(p) + c, line)


def _check_messages(messages: Any) -> None:
    """The chat module's checks (list, objects, roles, string contents), plus what training needs on top."""
    try:
        messages = validate_messages(messages)
    except InvalidArgumentError as e:
        raise ValueError(str(e)) from None
    for i, m in enumerate(messages):
        if not m["content"].strip() and not m.get("tool_calls"):
            raise ValueError(f"messages[{i}] ({m['role']}) has empty content")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message: nothing to learn")


def split_val(examples: list[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A seeded random held-out split: (train, val). At least one example stays on each side."""
    if not 0 < fraction < 1:
        raise DataError(f"--val-split {fraction}: must be between 0 and 1")
    if len(examples) < 2:
        raise DataError("--val-split needs at least 2 examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    val = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val])


def pack(examples: list[Example], seq_len: int, pad_id: int = 0, anchor: bool = False) -> list[Packed]:
    """Greedy packing in the given order: examples are appended to the current row while they fit, never split.
    `anchor`: the rows are marked as anchors (pack anchor examples apart from the others)."""
    rows: list[Packed] = []
    cur = Packed([], [], [], [], anchor)
    for doc, ex in enumerate(examples):
        n = len(ex.input_ids)
        if n > seq_len:
            raise DataError(f"line {ex.line}: {n} tokens do not fit a packed row of {seq_len}")
        if len(cur.input_ids) + n > seq_len:
            rows.append(_pad(cur, seq_len, pad_id))
            cur = Packed([], [], [], [], anchor)
        cur.input_ids += ex.input_ids
        cur.labels += ex.labels
        cur.position_ids += list(range(n))
        cur.doc_ids += [doc] * n
    if cur.input_ids:
        rows.append(_pad(cur, seq_len, pad_id))
    return rows


def _pad(row: Packed, seq_len: int, pad_id: int) -> Packed:
    k = seq_len - len(row.input_ids)
    return Packed(row.input_ids + [pad_id] * k, row.labels + [IGNORE] * k, row.position_ids + [0] * k,
                  row.doc_ids + [-1] * k, row.anchor)


def collate(rows: list[Example] | list[Packed], device: torch.device) -> dict[str, Any]:
    """Right-padded (B, T) ids and labels; padding is masked out of the loss (the causal mask keeps it out of the
    real tokens' attention). Packed rows also carry their restarting positions and document ids."""
    T = max(len(e.input_ids) for e in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    packed = isinstance(rows[0], Packed)
    positions = torch.zeros(len(rows), T, dtype=torch.long) if packed else None
    doc_ids = torch.full((len(rows), T), -1, dtype=torch.long) if packed else None
    tokens = 0
    for i, e in enumerate(rows):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        if packed:
            positions[i, :n] = torch.tensor(e.position_ids)
            doc_ids[i, :n] = torch.tensor(e.doc_ids)
            tokens += sum(d >= 0 for d in e.doc_ids)
        else:
            tokens += n
    move = (lambda t: None if t is None else t.to(device, non_blocking=True))
    return {"ids": move(ids), "labels": move(labels), "positions": move(positions), "doc_ids": move(doc_ids),
            "tokens": tokens, "rows": rows}


def loss_targets(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token targets (B, T), keep mask (B, T)): position t predicts label t + 1, where one applies."""
    target = torch.roll(batch["labels"], -1, dims=1)
    target[:, -1] = IGNORE
    return target, target != IGNORE
