"""Chat templates (jinja2, sandboxed) and message validation.

The template comes from `tokenizer_config.json` / `chat_template.jinja` or the GGUF's `tokenizer.chat_template`;
models without one get a built-in Llama 3 template. Rendering to ids keeps user text and template text apart:
special-token strings count only where the template wrote them (`encode_chat`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from corral.errors import InvalidArgumentError, TokenizerError
from corral.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "tool")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Private-use characters bracket each message's content while rendering, so we know which spans are user text.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK = re.compile(_OPEN + r"(\d+)" + _CLOSE)


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check a list of {role, content} dicts; raise `InvalidArgumentError` naming the bad message."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgumentError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidArgumentError(f"messages[{i}]: expected an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}].content: expected a string")
        out.append({"role": role, "content": content})
    return out


def _raise(msg: str) -> None:
    raise TokenizerError(f"chat template: {msg}")


def _env() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render(tok: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True,
           template: str | None = None, **kwargs: Any) -> str:
    """The chat template's text for `messages`, exactly as HF's `apply_chat_template(tokenize=False)` renders it."""
    text, _ = _render_marked(tok, messages, add_generation_prompt, template, **kwargs)
    return _MARK.sub(lambda m: messages[int(m.group(1))]["content"], text)


def _render_marked(tok, messages, add_generation_prompt, template, **kwargs) -> tuple[str, str]:
    from jinja2 import TemplateError

    src = template or tok.chat_template or LLAMA3_TEMPLATE
    marked = [{**m, "content": f"{_OPEN}{i}{_CLOSE}"} for i, m in enumerate(messages)]
    try:
        tpl = _env().from_string(src)
        text = tpl.render(messages=marked, add_generation_prompt=add_generation_prompt, bos_token=tok.bos_token,
                          eos_token=tok.eos_token, **kwargs)
    except TemplateError as e:
        raise TokenizerError(f"chat template does not render: {e}; pass another with --chat-template") from None
    return text, src


def encode_chat(tok: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                template: str | None = None, **kwargs: Any) -> list[int]:
    """Render and tokenize: special tokens from the template text, message contents as plain text.

    The rendered string is split at the special tokens the template itself wrote; each piece in between (template
    text and content alike) is tokenized as ordinary text. This is how llama.cpp tokenizes a rendered chat, minus
    its one flaw: a user who types `<|im_end|>` gets text, not a control token.
    """
    messages = validate_messages(messages)
    marked, _ = _render_marked(tok, messages, add_generation_prompt, template, **kwargs)
    specials = sorted((tok.piece(i) for i in tok.special_ids if tok.piece(i)), key=len, reverse=True)
    special_re = re.compile("|".join(re.escape(s) for s in specials)) if specials else None
    ids: list[int] = []
    buf: list[str] = []
    pos = 0
    for m in _MARK.finditer(marked):
        _split_template_text(marked[pos:m.start()], special_re, tok, buf, ids)
        buf.append(messages[int(m.group(1))]["content"])
        pos = m.end()
    _split_template_text(marked[pos:], special_re, tok, buf, ids)
    if buf:
        ids += tok.encode("".join(buf))
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


def _split_template_text(text: str, special_re: re.Pattern | None, tok: Tokenizer, buf: list[str],
                         ids: list[int]) -> None:
    """Template text: flush pending plain text at each special token, which becomes one id."""
    if special_re is None:
        buf.append(text)
        return
    pos = 0
    for m in special_re.finditer(text):
        buf.append(text[pos:m.start()])
        if "".join(buf):
            ids += tok.encode("".join(buf))
        buf.clear()
        ids.append(tok.token_id(m.group(0)))
        pos = m.end()
    buf.append(text[pos:])
