"""The Llama Guard 3 format: the prompt a guard model reads, the verdict it writes, and reading that verdict back.

The prompt body is rendered character for character as Meta's reference does (llama-recipes
`src/llama_recipes/inference/prompt_format_utils.py`, `PROMPT_TEMPLATE_3` / `build_custom_prompt`; the same body
in llama-stack's `llama_guard.py` and the chat template of meta-llama/Llama-Guard-3-8B): the task sentence (with
the reference's own "according our"), the categories (`S1: Violent Crimes.`, a description on the lines under its
name when there is one), the conversation as `User: ...` / `Agent: ...` turns separated by blank lines, and the
instructions. The role assessed is the last message's: 'User' for a prompt check, 'Agent' for a response check.

Conversations are lists of `{"role": "user"|"assistant", "content": str}`. A system message is dropped: it is the
operator's instruction to the assistant, not a turn Llama Guard's format has a place for (its reference template
accepts only user and assistant turns). Tool messages are refused. Contents are stripped, as the reference chat
template does.

The body is then wrapped as the guard model expects: one user turn of its chat template, with the generation prompt
(llama-stack sends it the same way). A template that is itself a Llama Guard template (it builds the body from the
conversation) is replaced by the plain Llama 3 turn format, which gives the reference's tokens; a model without a
template reads the body as raw text.

The verdict: `safe`, or `unsafe` and a line of comma-separated codes (`target_text`). `parse_verdict` reads what a
model actually writes: any case, extra blank lines, chat junk before it, codes separated by spaces or spelled as
names, trailing explanations. Text it cannot read gives `parsed=False`; the caller's policy decides (fail closed
by default: unsafe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from corral.chat import LLAMA3_TEMPLATE, encode_chat, render
from corral.errors import InvalidArgumentError
from corral.guard.taxonomy import Taxonomy, default_taxonomy
from corral.tokenizer import Tokenizer

TASK = ("Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
        "with the below categories.")
INSTRUCTIONS = ("Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
                " - First line must read 'safe' or 'unsafe'.\n"
                " - If unsafe, a second line must include a comma-separated list of violated categories.")
ROLE_NAMES = {"user": "User", "assistant": "Agent"}
ASSESS = ("auto", "user", "agent")
POLICIES = ("fail_closed", "fail_open")

Conversation = list[dict[str, str]]


# --- conversations --------------------------------------------------------------------------------------------------


def normalize_conversation(conversation: Any, assess: str = "auto") -> Conversation:
    """Validate a conversation and cut it to what is assessed.

    `assess`: "auto" checks the last message; "user" checks the last user message (what follows it is dropped:
    Llama Guard's prompt check sees no agent reply); "agent" checks the last message, which must be the assistant's.
    System messages are dropped (see the module docstring). Raises `InvalidArgumentError` naming the bad message.
    """
    if assess not in ASSESS:
        raise InvalidArgumentError(f"assess {assess!r}: expected one of {', '.join(ASSESS)}")
    if not isinstance(conversation, list) or not conversation:
        raise InvalidArgumentError("conversation: expected a non-empty list of {role, content} messages")
    turns: Conversation = []
    for i, m in enumerate(conversation):
        if not isinstance(m, dict):
            raise InvalidArgumentError(f"conversation[{i}]: expected an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role == "system":
            continue
        if role not in ROLE_NAMES:
            raise InvalidArgumentError(f"conversation[{i}].role: {role!r}; a guard checks 'user' and 'assistant' "
                                       "turns (system messages are dropped)")
        if not isinstance(content, str):
            raise InvalidArgumentError(f"conversation[{i}].content: expected a string")
        turns.append({"role": role, "content": content.strip()})
    if not turns:
        raise InvalidArgumentError("conversation: no user or assistant message to check")
    if assess == "user":
        last = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last is None:
            raise InvalidArgumentError("conversation: assess is 'user' but there is no user message")
        turns = turns[: last + 1]
    elif assess == "agent" and turns[-1]["role"] != "assistant":
        raise InvalidArgumentError("conversation: assess is 'agent' but the last message is not the assistant's; "
                                   "add the reply to check, or assess 'user'")
    return turns


# --- the prompt -----------------------------------------------------------------------------------------------------


def render_categories(taxonomy: Taxonomy) -> str:
    """`S1: Violent Crimes.` lines; a description goes on the lines under its category's name (as the
    reference's `build_custom_prompt(..., with_policy=True)` lays it out)."""
    lines = []
    for c in taxonomy:
        lines.append(f"{c.code}: {c.name}" + ("" if c.name.endswith(".") else "."))
        if c.description:
            lines.append(c.description)
    return "\n".join(lines)


def render_prompt(conversation: Any, taxonomy: Taxonomy | None = None, assess: str = "auto") -> str:
    """The Llama Guard 3 prompt body for a conversation (no chat template around it)."""
    turns = normalize_conversation(conversation, assess)
    role = ROLE_NAMES[turns[-1]["role"]]
    convo = "\n\n".join(f"{ROLE_NAMES[t['role']]}: {t['content']}" for t in turns)
    return (f"{TASK.format(role=role)}\n\n"
            f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{render_categories(taxonomy or default_taxonomy())}\n"
            f"<END UNSAFE CONTENT CATEGORIES>\n\n"
            f"<BEGIN CONVERSATION>\n\n{convo}\n\n<END CONVERSATION>\n\n"
            f"{INSTRUCTIONS.format(role=role)}")


def guard_template(tok: Tokenizer, template: str | None = None) -> str | None:
    """The chat template the body is wrapped in: `template`, else the model's; None for a model without one (raw
    body). A Llama Guard template (it renders the body itself) gives way to the plain Llama 3 turn format."""
    src = template or tok.chat_template
    if src and "UNSAFE CONTENT CATEGORIES" in src:
        return LLAMA3_TEMPLATE
    return src


def wrap_text(tok: Tokenizer, body: str, template: str | None = None) -> str:
    """The full prompt text the guard model reads: the body as one user turn of its chat template with the
    generation prompt, or the body itself for a model without a template."""
    src = guard_template(tok, template)
    if src is None:
        return body
    return render(tok, [{"role": "user", "content": body}], add_generation_prompt=True, template=src)


def encode_prompt(tok: Tokenizer, body: str, template: str | None = None) -> list[int]:
    """`wrap_text`'s prompt as token ids (special tokens only where the template wrote them)."""
    src = guard_template(tok, template)
    if src is None:
        return tok.encode(body, add_bos=tok.add_bos)
    return encode_chat(tok, [{"role": "user", "content": body}], add_generation_prompt=True, template=src)


def prompt_ids(tok: Tokenizer, conversation: Any, taxonomy: Taxonomy | None = None, assess: str = "auto",
               template: str | None = None) -> list[int]:
    """The token ids a guard model reads for a conversation: `render_prompt` wrapped by `encode_prompt`. `Guard`
    checks with these ids and `corral finetune --task guard` trains on them, so the two cannot drift apart."""
    return encode_prompt(tok, render_prompt(conversation, taxonomy, assess), template)


def reply_ids(tok: Tokenizer, text: str, template: str | None = None) -> list[int]:
    """The token ids `text` takes when the model writes it right after a guard prompt: tokenized after the end of
    the prompt (the text past the template's last special token, or the instructions' last line for a raw body),
    so a merge across the boundary is seen; the first of `reply_ids("safe")` is the token a scorer compares."""
    end = wrap_text(tok, "x", template)
    specials = [p for p in (tok.piece(i) for i in tok.special_ids) if p]
    cut = max((end.rfind(s) + len(s) for s in specials if s in end), default=-1)
    if guard_template(tok, template) is None or cut < 0:
        tail = INSTRUCTIONS.rsplit("\n", 1)[-1]
    else:
        tail = end[cut:]
    before, after = tok.encode(tail), tok.encode(tail + text)
    if tail and after[: len(before)] == before and len(after) > len(before):
        return after[len(before):]
    return tok.encode(text)


def end_of_turn_id(tok: Tokenizer, template: str | None = None) -> int | None:
    """The token that ends the guard model's reply: the special token its chat template writes right after an
    assistant turn's content (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`); the end-of-sequence token for a model
    without a template, or a template that closes turns with plain text. None when there is neither."""
    src = guard_template(tok, template)
    if src is not None:
        mark = "VERDICT"
        text = render(tok, [{"role": "user", "content": "x"}, {"role": "assistant", "content": mark}],
                      add_generation_prompt=False, template=src)
        after = text[text.rfind(mark) + len(mark):].lstrip(" \n") if mark in text else ""
        specials = sorted((p for p in (tok.piece(i) for i in tok.special_ids) if p), key=len, reverse=True)
        for s in specials:
            if after.startswith(s):
                return tok.token_id(s)
    return tok.eos_id


def verdict_ids(tok: Tokenizer, label: str, categories: list[str] | tuple[str, ...] = (),
                taxonomy: Taxonomy | None = None, template: str | None = None) -> list[int]:
    """The reply a guard model is trained to write after `prompt_ids`: `target_text` tokenized as the model
    writes it (`reply_ids`), then the end-of-turn token (so that generation stops after the verdict)."""
    eot = end_of_turn_id(tok, template)
    return reply_ids(tok, target_text(label, categories, taxonomy), template) + ([eot] if eot is not None else [])


# --- the verdict ----------------------------------------------------------------------------------------------------


def target_text(label: str, categories: list[str] | tuple[str, ...] = (), taxonomy: Taxonomy | None = None) -> str:
    """What a guard model should answer (its training target): "safe", or "unsafe" and a line of codes,
    "unsafe\\nS1,S3". `parse_verdict` reads it back exactly. With `taxonomy`, codes are checked against it and
    written as it spells them."""
    if label not in ("safe", "unsafe"):
        raise InvalidArgumentError(f"label {label!r}: expected 'safe' or 'unsafe'")
    codes = []
    for c in categories:
        if not isinstance(c, str) or not c.strip() or any(ch in c for ch in ", \n"):
            raise InvalidArgumentError(f"category {c!r}: expected a code such as S1")
        if taxonomy is not None:
            cat = taxonomy.get(c)
            if cat is None:
                raise InvalidArgumentError(f"category {c!r} is not in the taxonomy ({taxonomy.source}: "
                                           f"{', '.join(taxonomy.codes)})")
            c = cat.code
        if c not in codes:
            codes.append(c.strip())
    if label == "safe":
        if codes:
            raise InvalidArgumentError(f"a 'safe' example lists categories {codes}; only unsafe ones do")
        return "safe"
    return "unsafe\n" + ",".join(codes) if codes else "unsafe"


@dataclass
class Verdict:
    """A guard model's verdict as read from its text. `safe` is None when the text is not a verdict
    (`parsed=False`); `categories` are taxonomy codes in the order written, `unknown_codes` the code-like words
    that are not in the taxonomy (upper-cased)."""

    safe: bool | None
    categories: list[str] = field(default_factory=list)
    unknown_codes: list[str] = field(default_factory=list)
    parsed: bool = True
    raw: str = ""


# Control tokens a chat model may leave in its text (Llama 3, ChatML, Llama 2, Gemma, SentencePiece).
_SPECIAL = re.compile(r"<\|[^<>|\n]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|<eos>|<pad>|<unk>")
# A line's leading decoration and role label: "**", "> ", "- ", "assistant:", "Verdict -", ...
_DECOR = re.compile(r"^[\s*_#>`\"'\-•]+")
_LABEL = re.compile(r"^(?:assistant|agent|model|bot|answer|response|output|result|verdict|classification|"
                    r"(?:safety )?assessment)\b\s*[:\-]?\s*", re.IGNORECASE)
_FENCE = re.compile(r"^`{3,}\w*$")
_WORD = re.compile(r"^(unsafe|safe)(?![\w-])(.*)$", re.IGNORECASE)
_CODE_LIKE = re.compile(r"^[A-Za-z]{1,3}\d{1,3}$")
_STRIP = ".:;()[]{}\"'*`!?"


def _clean(line: str) -> str:
    """A line without decoration and role labels (repeated: '**Answer:** unsafe')."""
    prev = None
    while prev != line:
        prev = line
        line = _DECOR.sub("", line)
        line = _LABEL.sub("", line)
        line = line.strip().lstrip(":").strip()
    return line


def parse_verdict(text: str, taxonomy: Taxonomy | None = None) -> Verdict:
    """Read a guard model's output.

    The first line that says something (after control tokens, blank lines, code fences, markdown and role labels
    such as "assistant:" are skipped) must start with "safe" or "unsafe", in any case; otherwise the verdict is
    unparsed (`parsed=False, safe=None`). For "unsafe", the categories are read from the rest of that line, else
    from the next non-empty line; later lines are free text and ignored. Codes may be separated by commas, spaces or
    semicolons, and may be written as names ("Violent Crimes"); code-like words the taxonomy lacks ("S99") are
    reported in `unknown_codes`. A "safe" verdict has no categories.
    """
    taxonomy = taxonomy or default_taxonomy()
    raw = text if isinstance(text, str) else ""
    lines = [_clean(ln) for ln in _SPECIAL.sub("\n", raw).replace("\r", "\n").split("\n")]
    lines = [ln for ln in lines if ln and not _FENCE.match(ln)]
    m = _WORD.match(lines[0]) if lines else None
    if m is None:
        return Verdict(None, [], [], False, raw)
    if m.group(1).lower() == "safe":
        return Verdict(True, [], [], True, raw)
    cats, unknown = _read_categories(m.group(2), taxonomy)
    if not cats and not unknown and len(lines) > 1:
        cats, unknown = _read_categories(lines[1], taxonomy)
    return Verdict(False, cats, unknown, True, raw)


def _name_pattern(taxonomy: Taxonomy) -> re.Pattern[str] | None:
    names = sorted({n for c in taxonomy for n in (c.name.rstrip("."), *c.aliases) if n}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(n) for n in names) + r")(?![\w-])", re.IGNORECASE)


def _read_categories(text: str, taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    by_name = {n.lower(): c.code for c in taxonomy for n in (c.name.rstrip("."), *c.aliases)}
    found: list[tuple[int, str, bool]] = []  # (position, code, known)
    pattern = _name_pattern(taxonomy)
    rest = text
    if pattern is not None:
        for m in pattern.finditer(text):
            found.append((m.start(), by_name[m.group(0).lower()], True))
        rest = pattern.sub(lambda m: " " * len(m.group(0)), text)  # keep positions for the ordering
    for m in re.finditer(r"[^\s,;/|]+", rest):
        word = m.group(0).strip(_STRIP)
        if not word:
            continue
        cat = taxonomy.get(word)
        if cat is not None:
            found.append((m.start(), cat.code, True))
        elif _CODE_LIKE.match(word):
            found.append((m.start(), word.upper(), False))
    cats: list[str] = []
    unknown: list[str] = []
    for _, code, known in sorted(found):
        bucket = cats if known else unknown
        if code not in bucket:
            bucket.append(code)
    return cats, unknown


def is_unsafe(verdict: Verdict, on_parse_error: str = "fail_closed") -> bool:
    """The decision a verdict stands for: unsafe when it says so, and for unparsed text when the policy is
    `fail_closed` (the default; `fail_open` lets it through)."""
    if on_parse_error not in POLICIES:
        raise InvalidArgumentError(f"on_parse_error {on_parse_error!r}: expected fail_closed or fail_open")
    if verdict.parsed:
        return not verdict.safe
    return on_parse_error == "fail_closed"
