"""Evaluation tasks: declared in a small YAML file (or given as a bare JSONL/text file), checked when loaded.

A task YAML (every key but `kind` and the data is optional):

    name: capitals                 # default: the file's stem
    kind: generate                 # generate | multiple_choice | perplexity | tool_calls
    description: one line for the report
    data: capitals.jsonl           # JSONL (or .txt for perplexity), relative to the YAML; or inline `examples: [...]`
    chat: true                     # render the prompt as a user turn with the model's chat template (default false)
    system: You are terse.         # system message (chat only)
    prompt: "Capital of {{ country }}?"   # Jinja over the example's fields (default: its `prompt` or `question`)
    # generate
    max_tokens: 32                 # default 64 (tool_calls: 256)
    stop: ["\\n"]
    extract: "[A-Z][a-z]+"         # compare only this part of the reply (first match; group 1 if any)
    extract_take: first            # or last
    score: [contains]              # scorers (corral/eval/scoring.py); each example may add its own `checks`
    # multiple_choice: `choices` (list of strings) and `answer` (index or the right choice's text) per example
    target_delimiter: " "          # put before each choice (default " ", or "" with chat)
    # perplexity: `text` per JSONL line, or a .txt file (one document)
    max_len: 1024                  # tokens per scoring window
    # tool_calls: per example `messages`, `tools` (OpenAI's list), `expected` calls in BFCL's "possible answer"
    # form ([{"name", "arguments": {param: [acceptable values, "" = may be left out]}}], [] = no call), and an
    # optional `category` (simple, multiple, parallel, irrelevance: each gets its own accuracy)

A bare JSONL file is a task too: its lines say the kind (`text` → perplexity; `choices` → multiple choice; `prompt`,
`question` or `messages` → generate, scored by `contains` when the lines have an `answer`, plus each line's `checks`;
`tools` and `expected` → tool_calls).

An example with `messages` (a list of {role, content}) is a chat prompt as it is: `prompt`, `system` and `chat` do not
apply to it. Every problem is a `TaskError` naming the file and line.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import jsonl
from corral.errors import CorralError
from corral.eval.scoring import Scorer, ScorerSpecError, make_scorer

BUNDLED_DIR = Path(__file__).resolve().parent / "tasks"
KINDS = ("generate", "multiple_choice", "perplexity", "tool_calls")
KEYS = {"name", "kind", "description", "data", "examples", "generator", "chat", "system", "prompt", "max_tokens",
        "stop", "extract", "extract_take", "score", "target_delimiter", "max_len"}


class TaskError(CorralError):
    """A task file that cannot be read or does not make a task; the message names the file and line."""


@dataclass
class Example:
    fields: dict[str, Any]
    where: str  # "file:line" for messages
    messages: list[dict[str, str]] | None = None  # the chat prompt (chat tasks, or a `messages` field)
    text: str = ""  # the raw prompt (not chat) or the perplexity text
    checks: list[Scorer] = field(default_factory=list)  # the example's own `checks`


@dataclass
class Task:
    name: str
    kind: str
    source: str
    examples: list[Example]
    description: str = ""
    chat: bool = False
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    extract: re.Pattern | None = None
    extract_take: str = "first"
    scorers: list[Scorer] = field(default_factory=list)
    target_delimiter: str = " "
    max_len: int = 1024

    @property
    def metrics(self) -> list[str]:
        """The metric names this task reports; the first is the one charts show."""
        if self.kind == "perplexity":
            return ["ppl", "bits_per_byte", "bits_per_token"]
        if self.kind == "multiple_choice":
            return ["acc", "acc_norm"]
        if self.kind == "tool_calls":  # AST-exact answers; of those needing calls; of those needing none
            cats = sorted({str(e.fields["category"]) for e in self.examples if e.fields.get("category")})
            return ["acc", "call_acc", "no_call_acc", *(f"{c}_acc" for c in cats)]
        return ["acc", "checks_acc"] if any(e.checks for e in self.examples) or len(self.scorers) > 1 else ["acc"]

    @property
    def lower_is_better(self) -> bool:
        return self.kind == "perplexity"


def bundled_tasks() -> list[str]:
    """The names of the tasks that ship with corral."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path) -> Task:
    """A bundled task by name (`arithmetic`), or a task file: YAML, JSONL or (perplexity) plain text."""
    s = str(name_or_path)
    if s in bundled_tasks():
        return _from_yaml(BUNDLED_DIR / f"{s}.yaml")
    p = Path(s).expanduser()
    if not p.is_file():
        raise TaskError(f"{s}: neither a bundled task ({', '.join(bundled_tasks())}) nor a task file")
    if p.suffix in (".yaml", ".yml"):
        return _from_yaml(p)
    if p.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(p)
        return _build({"name": p.stem, "kind": _infer_kind(rows)}, rows, str(p), _Lines(p, None))
    if p.suffix in (".txt", ".md"):
        return _build({"name": p.stem, "kind": "perplexity"}, _read_text(p), str(p), _Lines(p, None))
    raise TaskError(f"{p}: a task file is .yaml, .jsonl or .txt")


# --- reading ------------------------------------------------------------------------------------------------------


class _Lines:
    """Where things are: the YAML node tree, for line numbers of keys and inline examples."""

    def __init__(self, path: Path, node: Any):
        self.path, self.node = path, node

    def key(self, key: str) -> str:
        if self.node is not None:
            for k, _v in getattr(self.node, "value", []):
                if getattr(k, "value", None) == key:
                    return f"{self.path}:{k.start_mark.line + 1}"
        return str(self.path)

    def item(self, key: str, i: int) -> str:
        if self.node is not None:
            for k, v in getattr(self.node, "value", []):
                if getattr(k, "value", None) == key and isinstance(v.value, list) and i < len(v.value):
                    return f"{self.path}:{v.value[i].start_mark.line + 1}"
        return self.key(key)


def _from_yaml(path: Path) -> Task:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        spec = yaml.safe_load(text)
        node = yaml.compose(text)
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise TaskError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    lines = _Lines(path, node)
    if not isinstance(spec, dict):
        raise TaskError(f"{path}:1: a task file is a YAML mapping (kind, data, prompt, score, ...)")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise TaskError(f"{lines.key(unknown[0])}: unknown key {unknown[0]!r}; a task takes {', '.join(sorted(KEYS))}")
    sources = [k for k in ("data", "examples", "generator") if k in spec]
    if len(sources) != 1:
        raise TaskError(f"{path}: give the examples once: `data` (a file), `examples` (a list) or `generator`")
    if "kind" not in spec:
        raise TaskError(f"{path}: missing `kind` ({', '.join(KINDS)})")
    if "data" in spec:
        if not isinstance(spec["data"], str):
            raise TaskError(f"{lines.key('data')}: `data` is a file path relative to the task file")
        data = path.parent / spec["data"]
        if not data.is_file():
            raise TaskError(f"{lines.key('data')}: data file {data} does not exist")
        rows = _read_text(data) if data.suffix in (".txt", ".md") else _read_jsonl(data)
    elif "examples" in spec:
        if not isinstance(spec["examples"], list) or not all(isinstance(x, dict) for x in spec["examples"]):
            raise TaskError(f"{lines.key('examples')}: `examples` is a list of mappings")
        rows = [(lines.item("examples", i), x) for i, x in enumerate(spec["examples"])]
    else:
        rows = _generated(spec["generator"], lines.key("generator"))
    return _build({"name": path.stem, **spec}, rows, str(path), lines)


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    def parse(obj: Any, n: int) -> tuple[str, dict[str, Any]]:
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        return f"{path}:{n}", obj

    return jsonl.read(path, parse, what="a JSONL file of examples", error=TaskError)[0]


def _read_text(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise TaskError(f"{path}: empty")
    return [(f"{path}:1", {"text": text})]


def _infer_kind(rows: list[tuple[str, dict[str, Any]]]) -> str:
    where, first = rows[0]
    if "tools" in first and "expected" in first:
        return "tool_calls"
    if "choices" in first:
        return "multiple_choice"
    if any(k in first for k in ("prompt", "question", "messages")):
        return "generate"
    if "text" in first:
        return "perplexity"
    raise TaskError(f"{where}: cannot tell the task kind: give lines `text` (perplexity), `choices` and `answer` "
                    "(multiple choice) or `prompt`/`question`/`messages` (generate), or write a task YAML")


# --- building and checking ----------------------------------------------------------------------------------------


def _build(spec: dict[str, Any], rows: list[tuple[str, dict[str, Any]]], source: str, lines: _Lines) -> Task:
    kind = spec["kind"]
    if kind not in KINDS:
        raise TaskError(f"{lines.key('kind')}: kind {kind!r} is not one of {', '.join(KINDS)}")

    def opt(key: str, types: type | tuple[type, ...], default: Any, what: str) -> Any:
        v = spec.get(key, default)
        if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in _tuple(types))):
            raise TaskError(f"{lines.key(key)}: `{key}` must be {what}")
        return v

    chat = opt("chat", bool, False, "true or false")
    system = opt("system", str, None, "a string")
    prompt_src = opt("prompt", str, None, "a Jinja template string")
    stop = opt("stop", (list, str), [], "a string or a list of strings")
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise TaskError(f"{lines.key('stop')}: `stop` must be non-empty strings")
    max_tokens = opt("max_tokens", int, 256 if kind == "tool_calls" else 64, "a positive integer")
    max_len = opt("max_len", int, 1024, "an integer of at least 16")
    if max_tokens < 1 or max_len < 16:
        raise TaskError(f"{lines.key('max_tokens' if max_tokens < 1 else 'max_len')}: out of range")
    take = opt("extract_take", str, "first", "first or last")
    if take not in ("first", "last"):
        raise TaskError(f"{lines.key('extract_take')}: `extract_take` must be first or last")
    pattern = opt("extract", str, None, "a regular expression")
    try:
        extract = re.compile(pattern) if pattern is not None else None
    except re.error as e:
        raise TaskError(f"{lines.key('extract')}: `extract` {pattern!r} does not compile: {e}") from None
    delim = opt("target_delimiter", str, "" if chat else " ", "a string")
    score = spec.get("score")
    if score is None:
        score = ["contains"] if kind == "generate" and any("answer" in r for _, r in rows) else []
    scorers = _scorers(score, lines.key("score"))
    template = _template(prompt_src, lines.key("prompt")) if prompt_src is not None else None
    task = Task(name=str(spec.get("name")), kind=kind, source=source, examples=[],
                description=opt("description", str, "", "a string"), chat=chat, max_tokens=max_tokens, stop=stop,
                extract=extract, extract_take=take, scorers=scorers, target_delimiter=delim, max_len=max_len)
    if kind != "generate" and scorers:
        raise TaskError(f"{lines.key('score')}: `score` applies to generate tasks only")
    for where, row in rows:
        task.examples.append(_example(task, row, where, template, system))
    if not task.examples:
        raise TaskError(f"{source}: no examples")
    return task


def _tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _scorers(score: Any, where: str) -> list[Scorer]:
    if isinstance(score, str | dict):
        score = [score]
    if not isinstance(score, list):
        raise TaskError(f"{where}: `score` is a scorer or a list of scorers (e.g. [contains] or [{{type: regex, "
                        "pattern: ...}}])")
    try:
        return [make_scorer(s) for s in score]
    except ScorerSpecError as e:
        raise TaskError(f"{where}: {e}") from None


def _template(src: str, where: str) -> Any:
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(src)
    except TemplateSyntaxError as e:
        raise TaskError(f"{where}: the prompt template does not parse: {e.message}") from None


def _render(template: Any, row: dict[str, Any], where: str) -> str:
    from jinja2 import TemplateError

    if template is None:
        for k in ("prompt", "question"):
            if isinstance(row.get(k), str):
                return row[k]
        raise TaskError(f"{where}: no `prompt` or `question` string, and the task has no `prompt` template")
    try:
        return template.render(**row)
    except TemplateError as e:
        raise TaskError(f"{where}: the prompt template fails on this example: {e}") from None


def _example(task: Task, row: dict[str, Any], where: str, template: Any, system: str | None) -> Example:
    ex = Example(fields=row, where=where)
    if task.kind == "perplexity":
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise TaskError(f"{where}: a perplexity example needs a non-empty `text` string")
        ex.text = row["text"]
        return ex
    if "messages" in row:
        from corral.chat import validate_messages

        try:
            ex.messages = validate_messages(row["messages"])
        except CorralError as e:
            raise TaskError(f"{where}: {e}") from None
    else:
        ex.text = _render(template, row, where)
        if task.chat:
            ex.messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": ex.text}]
    if task.kind == "tool_calls":
        _check_tool_example(ex, row, where)
        return ex
    if task.kind == "multiple_choice":
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise TaskError(f"{where}: `choices` must be a list of at least two non-empty strings")
        gold = row.get("answer")
        if isinstance(gold, str):
            if gold not in choices:
                raise TaskError(f"{where}: `answer` {gold!r} is not one of the choices")
        elif not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise TaskError(f"{where}: `answer` must be the right choice's index (0..{len(choices) - 1}) or text")
        return ex
    checks = row.get("checks", [])
    ex.checks = _scorers(checks, where)
    if not task.scorers and not ex.checks:
        raise TaskError(f"{where}: nothing scores this example: give the task a `score` or the example `checks`")
    if any(s.needs_answer for s in task.scorers + ex.checks):
        answers = row.get("answer")
        items = answers if isinstance(answers, list) else [answers]
        if answers is None or not items or not all(isinstance(a, str | int | float) and str(a) for a in items):
            raise TaskError(f"{where}: the scorer needs an `answer` (a string or a list of strings)")
    return ex


def _check_tool_example(ex: Example, row: dict[str, Any], where: str) -> None:
    from corral.tools import check_tools

    if ex.messages is None:
        raise TaskError(f"{where}: a tool_calls example needs `messages`")
    try:
        names = {t.name for t in check_tools(row.get("tools"))}
    except CorralError as e:
        raise TaskError(f"{where}: {e}") from None
    expected = row.get("expected")
    if not isinstance(expected, list):
        raise TaskError(f"{where}: `expected` is a list of calls ([] when the right answer makes none)")
    for j, call in enumerate(expected):
        args = call.get("arguments", {}) if isinstance(call, dict) else None
        if not isinstance(args, dict) or call.get("name") not in names:
            raise TaskError(f"{where}: expected[{j}] must be {{\"name\": one of the example's tools, \"arguments\": "
                            "{param: [acceptable values]}}")
        if not all(isinstance(v, list) and v for v in args.values()):
            raise TaskError(f"{where}: expected[{j}].arguments maps each parameter to a non-empty list of "
                            "acceptable values (\"\" = may be left out)")


def gold_index(ex: Example) -> int:
    gold = ex.fields["answer"]
    return ex.fields["choices"].index(gold) if isinstance(gold, str) else gold


# --- generated data ---------------------------------------------------------------------------------------------


def _generated(spec: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(spec, dict) or spec.get("name") not in GENERATORS:
        raise TaskError(f"{where}: `generator` is a mapping with a `name` ({', '.join(GENERATORS)}), `n` and `seed`")
    n, seed = spec.get("n", 100), spec.get("seed", 0)
    if not isinstance(n, int) or n < 1 or not isinstance(seed, int):
        raise TaskError(f"{where}: generator `n` must be a positive integer and `seed` an integer")
    return [(f"{where} (generated #{i + 1})", row) for i, row in enumerate(GENERATORS[spec["name"]](n, seed))]


def arithmetic(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` problems from `random.Random(seed)`, a spread of difficulty so that small models score above zero:
    a + b and a - b with operands of 1, 2 or 3 digits (each length equally likely; differences may be negative),
    a * b with a 1-2 digit a and a 1-digit b (2..9). Answers are integers, as text."""
    rng = random.Random(seed)

    def operand() -> int:
        d = rng.randint(1, 3)
        return rng.randint(10 ** (d - 1) if d > 1 else 1, 10**d - 1)

    out = []
    for _ in range(n):
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 99), rng.randint(2, 9)) if op == "*" else (operand(), operand())
        out.append({"a": a, "b": b, "op": op, "answer": str(a + b if op == "+" else a - b if op == "-" else a * b)})
    return out


GENERATORS = {"arithmetic": arithmetic}
