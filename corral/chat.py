"""Chat templates (jinja2, sandboxed) and message validation.

The template comes from `tokenizer_config.json` / `chat_template.jinja` or the GGUF's `tokenizer.chat_template`;
models without one get a built-in Llama 3 template. Rendering to ids keeps user text and template text apart:
special-token strings count only where the template wrote them (`encode_chat`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from corral.errors import InvalidArgumentError, TokenizerError
from corral.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "tool")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# A private-use character that breaks special-token strings typed in message contents (see encode_chat).
_DEFUSE = "\ue000"


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a list of {role, content} dicts; raise `InvalidArgumentError` naming the bad message. An assistant
    message may carry `tool_calls` instead of content (None becomes ""), a tool message its `tool_call_id`; these,
    and `name`, are kept for the template."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgumentError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidArgumentError(f"messages[{i}]: expected an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}].content: expected a string")
        extra = {k: m[k] for k in ("tool_calls", "tool_call_id", "name") if m.get(k) is not None}
        if "tool_calls" in extra and (role != "assistant" or not isinstance(extra["tool_calls"], list)):
            raise InvalidArgumentError(f"messages[{i}].tool_calls: only an assistant message carries them, as a list")
        out.append({"role": role, "content": content, **extra})
    return out


def _raise(msg: str) -> None:
    raise TokenizerError(f"chat template: {msg}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _env() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = _tojson  # HF's: plain JSON, not jinja's HTML-escaped (tool lists render as HF's do)
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render(tok: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True,
           template: str | None = None, **kwargs: Any) -> str:
    """The chat template's text for `messages`, exactly as HF's `apply_chat_template(tokenize=False)` renders it."""
    return _render(tok, messages, add_generation_prompt, template, **kwargs)


def template_source(tok: Tokenizer, template: str | None = None) -> str:
    """The template `render` uses: the one given, the model's, or the built-in Llama 3 one."""
    return template or tok.chat_template or LLAMA3_TEMPLATE


def _render(tok, messages, add_generation_prompt, template, **kwargs) -> str:
    from jinja2 import TemplateError

    src = template_source(tok, template)
    try:
        return _env().from_string(src).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                              bos_token=tok.bos_token, eos_token=tok.eos_token, **kwargs)
    except TemplateError as e:
        raise TokenizerError(f"chat template does not render: {e}; pass another with --chat-template") from None


def _specials(tok: Tokenizer) -> list[str]:
    return sorted((p for p in (tok.piece(i) for i in tok.special_ids) if p), key=len, reverse=True)


def encode_chat(tok: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                template: str | None = None, **kwargs: Any) -> list[int]:
    """Render and tokenize: special tokens from the template text, message contents as plain text.

    Special-token strings inside message contents are defused before rendering (a private-use character goes after
    their first character), so the only live ones in the rendered string are those the template wrote. The string
    is split at those; each piece in between (template text and content alike) is tokenized as ordinary text with
    the defusing character removed. The same holds for every string in tool calls and in `kwargs` (a tool list).
    This is how llama.cpp tokenizes a rendered chat, minus its one flaw: a user who
    types `<|im_end|>` gets text, not a control token. Template filters (`| trim`) see the real content.
    """
    messages = validate_messages(messages)
    specials = _specials(tok)
    if not specials:
        ids = tok.encode(_render(tok, messages, add_generation_prompt, template, **kwargs))
    else:
        defused = [{k: v if k == "role" else _defuse(v, specials) for k, v in m.items()} for m in messages]
        kwargs = {k: _defuse(v, specials) for k, v in kwargs.items()}
        text = _render(tok, defused, add_generation_prompt, template, **kwargs)
        special_re = re.compile("|".join(re.escape(s) for s in specials))
        ids, pos = [], 0
        for m in special_re.finditer(text):
            if m.start() > pos:
                ids += tok.encode(text[pos:m.start()].replace(_DEFUSE, ""))
            ids.append(tok.token_id(m.group(0)))
            pos = m.end()
        if pos < len(text):
            ids += tok.encode(text[pos:].replace(_DEFUSE, ""))
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


def _defuse(content: Any, specials: list[str]) -> Any:
    """`content` (a string, or any JSON-like value: every string in it) with special-token strings broken."""
    if isinstance(content, dict):
        return {_defuse(k, specials): _defuse(v, specials) for k, v in content.items()}
    if isinstance(content, list):
        return [_defuse(v, specials) for v in content]
    if not isinstance(content, str):
        return content
    content = content.replace(_DEFUSE, "")  # the marker itself never survives from user text
    for s in specials:
        if s in content:
            content = content.replace(s, s[0] + _DEFUSE + s[1:])
    return content
