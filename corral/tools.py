"""Tool calling, the text side: OpenAI `tools` and `tool_choice` checked, the conversation and the tool list put
into the prompt, the grammar a call must follow, and the calls parsed back out of the answer (streamed or not).

A model speaks one of two dialects:
- `llama3`: Llama 3.1's own format, `{"name": ..., "parameters": {...}}` as the whole answer (parallel calls joined
  by "; ", as vLLM's llama3_json parser reads them). Chosen when the chat template is Llama 3.1's (it knows `tools`
  and the `ipython` role); the template itself writes the tool list and renders past calls and results.
- `hermes`: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks (Hermes / Qwen 2.5 / SmolLM2
  1.7B). Chosen for every other template; one that knows `tools` renders them itself, one that does not (SmolLM2-135M's
  ChatML) gets the documented fallback: the tool list in a system message (`FALLBACK_SYSTEM`), past calls as
  `<tool_call>` blocks in the assistant's text, results as user messages in `<tool_response>` blocks.

A call always parses: `grammar()` is an llguidance Lark grammar of the dialect's call list, each call's arguments
constrained by its function's JSON schema. With tool_choice `required` or a named function it applies from the
first token; with `auto` it is lazy (llama.cpp's trigger idea): free text until the answer starts a call
(`Dialect.trigger`), then constrained to the end. `CallStream` splits a streamed answer into content and calls the
same way `parse` does, so a stream reassembles to the non-streamed answer.

Training rows and eval tasks with tools go through `tool_conversation`, so a model is trained and scored on the
prompt the server sends it. Llama 3.1's built-in tools (`BUILTIN`) are described on `Llama3`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidArgumentError

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
# JSON written without free whitespace, `json.dumps` separators (as corral.grammar does for response_format)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

FALLBACK_SYSTEM = """You can call functions to answer. They are listed between <tools> and </tools>, each with its
arguments (type, whether required or its default, what it is):
<tools>
{tools}
</tools>
To call one, answer with a JSON object of its name and arguments inside <tool_call></tool_call> tags:
<tool_call>
{{"name": "function name", "arguments": {{"argument name": "value"}}}}
</tool_call>
{parallel}Results come back in <tool_response></tool_response> tags. If no function fits, answer in plain text."""


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """OpenAI's shape, as chat templates read it."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass
class ToolCall:
    """A call the model made: `arguments` is JSON text (OpenAI's `function.arguments`)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolChoice:
    """`auto` (the model decides), `none` (no call), `required` (at least one call), or `required` with `name`
    (exactly one call, of that function)."""

    mode: str
    name: str | None = None


def check_tools(tools: Any, where: str = "tools") -> list[Tool]:
    """OpenAI `tools` as `Tool`s; `InvalidArgumentError` naming the bad entry and field."""
    if not isinstance(tools, list) or not tools:
        raise InvalidArgumentError(f"{where}: expected a non-empty list of {{\"type\": \"function\", "
                                   "\"function\": {\"name\", \"description\", \"parameters\"}} objects")
    if len(tools) > MAX_TOOLS:
        raise InvalidArgumentError(f"{where}: at most {MAX_TOOLS} tools, not {len(tools)}")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise InvalidArgumentError(f"{at}: expected {{\"type\": \"function\", \"function\": {{...}}}}")
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidArgumentError(f"{at}.function.name: {name!r} is not a function name (1 to 64 letters, "
                                       "digits, _ or -)")
        if any(x.name == name for x in out):
            raise InvalidArgumentError(f"{at}.function.name: {name!r} is given twice")
        desc = f.get("description") or ""
        if not isinstance(desc, str):
            raise InvalidArgumentError(f"{at}.function.description: expected a string")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InvalidArgumentError(f"{at}.function.parameters: expected a JSON Schema of an object, e.g. "
                                       "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}")
        out.append(Tool(name, desc, params))
    return out


def check_choice(choice: Any, tools: list[Tool], where: str = "tool_choice") -> ToolChoice:
    """OpenAI `tool_choice` (None: auto) against the request's tools."""
    if choice is None:
        return ToolChoice("auto")
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not any(t.name == name for t in tools):
            raise InvalidArgumentError(f"{where}.function.name: {name!r} is not one of the request's tools "
                                       f"({', '.join(t.name for t in tools)})")
        return ToolChoice("required", name)
    raise InvalidArgumentError(f"{where}: expected \"auto\", \"none\", \"required\" or "
                               "{\"type\": \"function\", \"function\": {\"name\": ...}}")


def check_message_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` (OpenAI's shape, arguments as JSON text), checked. Blank arguments (""),
    which clients send back for a call without arguments, become "{}" in place."""
    if not isinstance(calls, list):
        raise InvalidArgumentError(f"{where}: expected a list of tool calls")
    for j, c in enumerate(calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("arguments"), str):
            raise InvalidArgumentError(f"{where}[{j}]: expected {{\"id\", \"type\": \"function\", \"function\": "
                                       "{\"name\": str, \"arguments\": JSON text}}")
        if not f["arguments"].strip():
            f["arguments"] = "{}"
        try:
            args = json.loads(f["arguments"])
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"{where}[{j}].function.arguments is not JSON ({e})") from None
        if not isinstance(args, dict):
            raise InvalidArgumentError(f"{where}[{j}].function.arguments must be a JSON object")
    return calls


# --- dialects -------------------------------------------------------------------------------------------------


class Dialect:
    """How one family of chat templates writes calls; see the module docstring."""

    name = ""
    trigger = ""  # the text that starts a call
    anywhere = True  # the trigger may follow prose (else only at the answer's start, after white space)
    separator = "\n"  # between parallel calls
    args_key = "arguments"

    def prompt(self, messages: list[dict[str, Any]], tools: list[Tool], parallel: bool, native: bool
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and extra template variables that put `tools` and past calls into the prompt. `native`:
        the template renders `tools` and `tool_calls` itself."""
        if native:
            return [_structured(m) for m in messages], ({"tools": [t.spec() for t in tools]} if tools else {})
        return _fallback(messages, tools, parallel), {}

    def grammar(self, tools: list[Tool], choice: ToolChoice, parallel: bool) -> str:
        """An llguidance Lark grammar of the call list this request allows (starting with the trigger)."""
        names = [t for t in tools if choice.name is None or t.name == choice.name]
        rules = [f"f{i}: %json {json.dumps(self._call_schema(t))}" for i, t in enumerate(names)]
        call = " | ".join(f"f{i}" for i in range(len(names)))
        more = f' ({json.dumps(self.separator)} call)*' if parallel and choice.name is None else ""
        return "\n".join(["%llguidance {}", f"start: call{more}", f"call: {self._wrap(call)}", *rules]) + "\n"

    def _call_schema(self, t: Tool) -> dict[str, Any]:
        args = _rebase(closed(t.parameters), f"/properties/{self.args_key}")
        return {"type": "object", "properties": {"name": {"const": t.name}, self.args_key: args},
                "required": ["name", self.args_key], "additionalProperties": False, "x-guidance": JSON_OPTIONS}

    def _wrap(self, call: str) -> str:
        return call

    def start(self, text: str) -> int | None:
        """Where in `text` a call starts (the trigger's position), None if nowhere (yet)."""
        if self.anywhere:
            i = text.find(self.trigger)
            return None if i < 0 else i
        body = text.lstrip()
        return len(text) - len(body) if body.startswith(self.trigger) else None

    def may_start(self, text: str) -> bool:
        """`text` could still grow into one whose call starts at its end (hold it back from a stream)."""
        if self.anywhere:
            return any(self.trigger.startswith(text[i:]) for i in range(max(0, len(text) - len(self.trigger)),
                                                                          len(text)))
        body = text.lstrip()
        return self.trigger.startswith(body)

    def calls(self, text: str) -> list[ToolCall]:
        """The complete calls in `text` (from the trigger on); a call cut short is not one."""
        raise NotImplementedError

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """An answer as (content, calls): the text before the first call (None if only white space) and the
        complete calls. An answer without a call is all content."""
        at = self.start(text)
        if at is None:
            return text, []
        calls = self.calls(text[at:])
        content = text[:at].rstrip()
        return (content or None), calls


BUILTIN = ("brave_search", "wolfram_alpha", "code_interpreter")  # Llama 3.1's built-in tools
PYTHON_TAG = "<|python_tag|>"


class Llama3(Dialect):
    """Llama 3.1: custom tools as JSON; a tool named as one of its built-ins (`BUILTIN`) goes to the template as
    `builtin_tools`, and the model calls it as `<|python_tag|>brave_search.call(query="...")` (code_interpreter:
    `<|python_tag|>` then the code), parsed into a call of that name (code_interpreter's argument: `code`)."""

    name, trigger, anywhere, separator, args_key = "llama3", "{", False, "; ", "parameters"

    def start(self, text: str) -> int | None:
        body = text.lstrip()
        return len(text) - len(body) if body.startswith((self.trigger, PYTHON_TAG)) else None

    def may_start(self, text: str) -> bool:
        body = text.lstrip()
        return self.trigger.startswith(body) or PYTHON_TAG.startswith(body)

    def prompt(self, messages, tools, parallel, native):
        if not native:
            return super().prompt(messages, tools, parallel, native)
        custom = [t for t in tools if t.name not in BUILTIN]
        kwargs: dict[str, Any] = {"tools": [t.spec() for t in custom]} if custom else {}
        if builtin := [t.name for t in tools if t.name in BUILTIN]:
            kwargs["builtin_tools"] = builtin
        out = []  # Llama 3.1's template takes one call per assistant message
        for m in messages:
            calls = m.get("tool_calls") or []
            if len(calls) > 1:
                out += [_structured({**m, "content": m.get("content") if k == 0 else "", "tool_calls": [c]})
                        for k, c in enumerate(calls)]
            else:
                out.append(_structured(m))
        return out, kwargs

    def calls(self, text: str) -> list[ToolCall]:
        if text.lstrip().startswith(PYTHON_TAG):
            rest = text.lstrip()[len(PYTHON_TAG):].strip()
            if rest.startswith("{"):
                return self.calls(rest)
            m = re.fullmatch(r"(brave_search|wolfram_alpha)\.call\((.*)\)", rest, re.S)
            if m is None:
                return [ToolCall("code_interpreter", json.dumps({"code": rest}, ensure_ascii=False))] if rest else []
            args = _call_kwargs(m.group(2))
            return [] if args is None else [ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))]
        out, dec, i = [], json.JSONDecoder(), 0
        while i < len(text):
            try:
                obj, i = dec.raw_decode(text, i)
            except json.JSONDecodeError:
                break
            if not _is_call(obj):
                break
            args = obj.get("parameters", obj.get("arguments"))
            out.append(ToolCall(obj["name"], json.dumps(args, ensure_ascii=False)))
            while i < len(text) and text[i] in "; \n\t":
                i += 1
        return out


def _call_kwargs(src: str) -> dict[str, Any] | None:
    """`query="x", n=3` (a built-in call's arguments, Python keyword syntax) as a dict of literals; None if not."""
    import ast

    try:
        call = ast.parse(f"f({src})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            return None
        return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
    except (SyntaxError, ValueError):
        return None


class Hermes(Dialect):
    name, trigger, anywhere, separator = "hermes", "<tool_call>", True, "\n"

    def _wrap(self, call: str) -> str:
        return f'"<tool_call>\\n" ({call}) "\\n</tool_call>"'

    def calls(self, text: str) -> list[ToolCall]:
        # decoded, not matched: an argument may itself hold "</tool_call>"
        out, dec, i, close = [], json.JSONDecoder(), 0, "</tool_call>"
        while (i := text.find(self.trigger, i)) >= 0:
            i += len(self.trigger)
            try:
                obj, end = dec.raw_decode(text, len(text) - len(text[i:].lstrip()))
            except json.JSONDecodeError:
                continue
            tail = text[end:].lstrip()
            if not tail.startswith(close):
                continue
            i = len(text) - len(tail) + len(close)
            if _is_call(obj):
                args = obj.get("arguments", obj.get("parameters"))
                out.append(ToolCall(obj["name"], json.dumps(args, ensure_ascii=False)))
        return out


def _is_call(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("name"), str)
            and isinstance(obj.get("arguments", obj.get("parameters")), dict))


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that lists properties and says nothing of
    others: a function takes the arguments it names (OpenAI's strict mode asks the same); without it a small
    model invents arguments (`{"city": "Paris", "type": "object", ...}`) until max_tokens."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k in ("items", "anyOf", "oneOf", "allOf", "prefixItems") else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {k: closed(v) for k, v in schema[key].items()}
    if isinstance(schema.get("properties"), dict):
        out.setdefault("additionalProperties", False)
    return out


_VALUES = ("enum", "const", "default", "examples")  # keywords whose values are data, not schemas
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")  # name -> schema


def _rebase(schema: Any, base: str) -> Any:
    """`schema`, placed at JSON pointer `base` inside a larger one: its local `$ref`s ("#/$defs/node") made to
    point where it now sits ("#/properties/arguments/$defs/node")."""
    if isinstance(schema, list):
        return [_rebase(s, base) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "$ref" and isinstance(v, str) and v.startswith("#"):
            out[k] = "#" + base + v[1:]
        elif k in _MAPS and isinstance(v, dict):
            out[k] = {name: _rebase(sub, base) for name, sub in v.items()}
        else:
            out[k] = v if k in _VALUES else _rebase(v, base)
    return out


def dialect_for(template: str) -> tuple[Dialect, bool]:
    """The dialect of a chat template's source, and whether it renders `tools` itself (native)."""
    native = bool(re.search(r"\btools\b", template))
    if native and ("ipython" in template or "<|python_tag|>" in template):
        return Llama3(), True
    return Hermes(), native


def tool_conversation(messages: list[dict[str, Any]], tools: Any, template: str, parallel: bool = True
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A conversation with OpenAI `tools` (or None) and past calls, as the chat template `template` (its source)
    takes it: (messages, extra template variables), as the server prompts it. Training rows and eval tasks with
    tools go through here; `InvalidArgumentError` names a bad tool or call."""
    tool_list = check_tools(tools) if tools is not None else []
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            check_message_calls(m["tool_calls"], f"messages[{i}].tool_calls")
    dialect, native = dialect_for(template)
    return dialect.prompt(messages, tool_list, parallel, native)


def _structured(m: dict[str, Any]) -> dict[str, Any]:
    """A message as tool-aware templates read it: call arguments as objects (HF's convention), not JSON text."""
    if not m.get("tool_calls"):
        return m
    calls = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
             for c in m["tool_calls"]]
    return {**m, "content": m.get("content") or "", "tool_calls": calls}


def describe(tool: Tool) -> str:
    """A function as the fallback prompt lists it: a line for the function, one per argument. Half the tokens of
    its JSON schema (the 9 tools of examples/tools: 1951 tokens as JSON, 1208 so), which matters to a small
    model's context; the grammar holds the call to the full schema either way."""
    props = tool.parameters.get("properties") or {}
    required = set(tool.parameters.get("required") or [])
    lines = [f"- {tool.name}: {tool.description}".rstrip(": ")]
    for name, spec in props.items():
        spec = spec if isinstance(spec, dict) else {}
        flag = "required" if name in required else (f"default {json.dumps(spec['default'], ensure_ascii=False)}"
                                                      if "default" in spec else "optional")
        about = f": {spec['description']}" if isinstance(spec.get("description"), str) else ""
        lines.append(f"  {name} ({_type(spec)}, {flag}){about}")
    return "\n".join(lines)


def _type(spec: dict[str, Any]) -> str:
    """A property's type in a few words; a schema too rich for that as compact JSON."""
    if "enum" in spec and isinstance(spec["enum"], list):
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in spec["enum"])
    kind = spec.get("type")
    if kind in ("string", "integer", "number", "boolean"):
        out = kind
        if "pattern" in spec:
            out += f" matching {spec['pattern']}"
        if "format" in spec:
            out += f" ({spec['format']})"
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if lo is not None or hi is not None:
            out += f" from {lo}" * (lo is not None) + f" to {hi}" * (hi is not None)
        return out
    if kind == "array" and isinstance(spec.get("items"), dict) and spec["items"].get("type") != "object":
        return f"list of {_type(spec['items'])}"
    rest = {k: v for k, v in spec.items() if k not in ("description", "default")}
    return json.dumps(rest, ensure_ascii=False, separators=(",", ":"))


def _fallback(messages: list[dict[str, Any]], tools: list[Tool], parallel: bool) -> list[dict[str, Any]]:
    """The conversation for a template that knows no tools: the tool list in the system message, past calls as
    `<tool_call>` blocks, results as user turns of `<tool_response>` blocks (consecutive results merged)."""
    out: list[dict[str, Any]] = []
    if tools:
        listing = "\n".join(describe(t) for t in tools)
        note = "Several calls may follow each other, one block each.\n" if parallel else ""
        system = FALLBACK_SYSTEM.format(tools=listing, parallel=note)
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"] + "\n\n" + system
            messages = messages[1:]
        out.append({"role": "system", "content": system})
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif m.get("tool_calls"):
            blocks = "\n".join("<tool_call>\n" + json.dumps(
                {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])},
                ensure_ascii=False) + "\n</tool_call>" for c in m["tool_calls"])
            text = (m.get("content") or "").rstrip()
            out.append({"role": "assistant", "content": (text + "\n" if text else "") + blocks})
        else:
            out.append(m)
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


# --- streams --------------------------------------------------------------------------------------------------


class CallStream:
    """One streamed answer split as `Dialect.parse` splits the whole: `feed` returns the content that can be sent
    now (text that could still start a call, and white space before it, waits); `finish` returns the rest of the
    content and the complete calls. What was sent is always a prefix of `parse`'s content."""

    def __init__(self, dialect: Dialect):
        self.dialect, self.text, self.sent, self.at = dialect, "", 0, None

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.at is None:
            self.at = self.dialect.start(self.text)
        if self.at is not None:
            ready = self.text[:self.at].rstrip()
        elif self.dialect.anywhere:  # hold back the longest tail that could begin the trigger
            t, n = self.text, len(self.dialect.trigger)
            cut = next((i for i in range(max(0, len(t) - n + 1), len(t)) if self.dialect.trigger.startswith(t[i:])),
                       len(t))
            ready = t[:cut].rstrip()
        else:  # a call only at the start: nothing goes until the answer's first character rules one out
            ready = "" if self.dialect.may_start(self.text) else self.text
        out = ready[self.sent:]
        self.sent = max(self.sent, len(ready))
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        content, calls = self.dialect.parse(self.text)
        return (content or "")[self.sent:], calls
