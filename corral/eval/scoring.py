"""Scorers and metrics; no torch, no model.

A scorer takes a reply (and the example it answers) and says pass or fail. Two families, one interface:
- answer scorers compare with the example's `answer` (a string, or a list of acceptable strings): `exact`,
  `contains`, `regex` (the pattern is the scorer's `pattern`, or else the answer itself);
- checks verifiable by code look at the reply alone: `lowercase`, `uppercase`, `max_words`, `min_words`, `bullets`,
  `numbered`, `starts_with`, `ends_with`, `contains_all`, `excludes`, `no_commas`, `quoted`, `max_chars`, `json`.

Specs are YAML/JSON mappings (`{type: max_words, n: 20}`) or strings (`max_words:20`, `regex:^\\d+$`, `json`).
Multiple choice follows lm-evaluation-harness: `acc` picks the choice with the highest summed log-likelihood,
`acc_norm` the highest log-likelihood divided by the choice's length in characters (np.argmax: the first of equals).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError, InvalidArgumentError


class ScorerSpecError(InvalidArgumentError):
    """A scorer spec that names no scorer or lacks a parameter."""


NORMALIZERS = ("lower", "strip", "whitespace", "punct", "articles")
DEFAULT_NORMALIZE = ("lower", "strip", "whitespace")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str, steps: Sequence[str] = DEFAULT_NORMALIZE) -> str:
    """Apply normalisation steps in a fixed order: lower, punct (ASCII punctuation removed), articles (a/an/the
    removed as words), whitespace (runs collapsed to one space), strip (ends trimmed)."""
    if "lower" in steps:
        text = text.lower()
    if "punct" in steps:
        text = text.translate(_PUNCT)
    if "articles" in steps:
        text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.IGNORECASE)
    if "whitespace" in steps:
        text = re.sub(r"\s+", " ", text)
    if "strip" in steps:
        text = text.strip()
    return text


@dataclass
class Scorer:
    """`name` (as shown in reports) and `fn(reply, example) -> bool`; `needs_answer`: reads example['answer']."""

    name: str
    fn: Callable[[str, dict[str, Any]], bool]
    needs_answer: bool = False

    def __call__(self, reply: str, example: dict[str, Any]) -> bool:
        return bool(self.fn(reply, example))


def answers_of(example: dict[str, Any]) -> list[str]:
    """The acceptable answers of an example: its `answer` as a list of strings (numbers are formatted)."""
    a = example.get("answer")
    items = a if isinstance(a, list) else [a]
    return [str(x) for x in items if x is not None]


# --- the scorers --------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def _bullets(text: str) -> int:
    return sum(1 for ln in text.splitlines() if re.match(r"\s*[-*•]\s+\S", ln))


def _numbered(text: str) -> int:
    return sum(1 for ln in text.splitlines() if re.match(r"\s*\d+[.)]\s+\S", ln))


def strip_fences(text: str) -> str:
    """The body of a ```json ... ``` (or bare ```) fence when the reply is one, else the reply, stripped."""
    m = re.fullmatch(r"\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*", text, flags=re.DOTALL)
    return (m[1] if m else text).strip()


def json_ok(text: str, keys: Sequence[str] = (), type_: str | None = None, schema: dict | None = None,
            fences: bool = True) -> bool:
    """Whether `text` is one JSON value (optionally inside a code fence), of `type_` (object, array, string,
    number, boolean), an object with all `keys`, and valid against the JSON `schema` (needs `jsonschema`)."""
    try:
        value = json.loads(strip_fences(text) if fences else text)
    except ValueError:
        return False
    types = {"object": dict, "array": list, "string": str, "number": (int, float), "boolean": bool}
    if type_ is not None and (not isinstance(value, types[type_]) or (type_ == "number" and isinstance(value, bool))):
        return False
    if keys and (not isinstance(value, dict) or any(k not in value for k in keys)):
        return False
    if schema is not None:
        import jsonschema

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return False
    return True


def _need(spec: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in spec:
        raise ScorerSpecError(f"scorer {spec['type']!r} needs `{key}` ({what})")
    v = spec[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is int:
        raise ScorerSpecError(f"scorer {spec['type']!r}: `{key}` must be {what}, not {v!r}")
    return v


def _word_list(spec: dict[str, Any], key: str = "words") -> list[str]:
    v = spec.get(key)
    if isinstance(v, str):
        v = [w.strip() for w in v.split(",") if w.strip()]
    if not isinstance(v, list) or not v or not all(isinstance(w, str) for w in v):
        raise ScorerSpecError(f"scorer {spec['type']!r} needs `{key}`: a list of strings")
    return v


def _norm_steps(spec: dict[str, Any], default: Sequence[str]) -> tuple[str, ...]:
    steps = spec.get("normalize", default)
    if isinstance(steps, str):
        steps = [s.strip() for s in steps.split(",") if s.strip()]
    if not isinstance(steps, list | tuple) or any(s not in NORMALIZERS for s in steps):
        raise ScorerSpecError(f"scorer {spec['type']!r}: `normalize` must be a list of {', '.join(NORMALIZERS)}")
    return tuple(steps)


def _exact(spec):
    steps = _norm_steps(spec, DEFAULT_NORMALIZE)
    return lambda r, ex: any(normalize(r, steps) == normalize(a, steps) for a in answers_of(ex)), True


def _contains(spec):
    steps = _norm_steps(spec, DEFAULT_NORMALIZE)
    return lambda r, ex: any(normalize(a, steps) in normalize(r, steps) for a in answers_of(ex)), True


def _regex(spec):
    flags = re.IGNORECASE if spec.get("ignore_case", False) else 0
    pattern = spec.get("pattern")
    if pattern is not None:
        rx = _compile(pattern, flags)
        return lambda r, ex: rx.search(r) is not None, False
    return lambda r, ex: any(_compile(a, flags).search(r) for a in answers_of(ex)), True


def _compile(pattern: str, flags: int) -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise ScorerSpecError(f"regex {pattern!r} does not compile: {e}") from None


def _case(spec, upper: bool):
    def f(r, ex):
        letters = [c for c in r if c.isalpha()]
        return bool(letters) and all(c.isupper() if upper else c.islower() for c in letters)
    return f, False


def _count(spec, counter, cmp):
    n = _need(spec, "n", int, "an integer")
    return (lambda r, ex: cmp(counter(r), n)), False


def _affix(spec, start: bool):
    text = _need(spec, "text", str, "a string")
    ic = spec.get("ignore_case", False)

    def f(r, ex):
        r, t = (r.strip().lower(), text.lower()) if ic else (r.strip(), text)
        return r.startswith(t) if start else r.endswith(t)
    return f, False


def _contains_all(spec):
    words = _word_list(spec)
    return lambda r, ex: all(w.lower() in r.lower() for w in words), False


def _excludes(spec):
    words = _word_list(spec)
    return lambda r, ex: not any(re.search(rf"\b{re.escape(w.lower())}\b", r.lower()) for w in words), False


def _json(spec):
    type_ = spec.get("json_type", spec.get("value_type"))
    if type_ is not None and type_ not in ("object", "array", "string", "number", "boolean"):
        raise ScorerSpecError(f"scorer 'json': `json_type` {type_!r} is not object, array, string, number or boolean")
    keys = spec.get("keys", [])
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    schema = spec.get("schema")
    if schema is not None:
        try:
            import jsonschema
        except ImportError:
            raise ScorerSpecError("scorer 'json' with a `schema` needs the jsonschema package: "
                                  "pip install jsonschema") from None
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ScorerSpecError(f"scorer 'json': `schema` is not a valid JSON schema ({e.message})") from None
    fences = spec.get("fences", True)
    return lambda r, ex: json_ok(r, keys, type_, schema, fences), False


SCORERS: dict[str, Callable[[dict[str, Any]], tuple[Callable, bool]]] = {
    "exact": _exact,
    "contains": _contains,
    "regex": _regex,
    "lowercase": lambda s: _case(s, upper=False),
    "uppercase": lambda s: _case(s, upper=True),
    "max_words": lambda s: _count(s, lambda r: len(_words(r)), lambda a, b: a <= b),
    "min_words": lambda s: _count(s, lambda r: len(_words(r)), lambda a, b: a >= b),
    "max_chars": lambda s: _count(s, lambda r: len(r.strip()), lambda a, b: a <= b),
    "bullets": lambda s: _count(s, _bullets, lambda a, b: a == b),
    "numbered": lambda s: _count(s, _numbered, lambda a, b: a == b),
    "starts_with": lambda s: _affix(s, start=True),
    "ends_with": lambda s: _affix(s, start=False),
    "contains_all": _contains_all,
    "excludes": _excludes,
    "no_commas": lambda s: ((lambda r, ex: "," not in r), False),
    "quoted": lambda s: ((lambda r, ex: len(r.strip()) >= 2 and r.strip()[0] == r.strip()[-1] == '"'), False),
    "json": _json,
}
# The parameter a string spec `name:ARG` sets.
_STRING_ARG = {"regex": "pattern", "max_words": "n", "min_words": "n", "max_chars": "n", "bullets": "n",
               "numbered": "n", "starts_with": "text", "ends_with": "text", "contains_all": "words",
               "excludes": "words", "json": "keys", "exact": "normalize", "contains": "normalize"}


def parse_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """`"max_words:20"` → `{"type": "max_words", "n": 20}`; a mapping is checked and returned as it is."""
    if isinstance(spec, str):
        name, sep, arg = spec.partition(":")
        name = name.strip()
        out: dict[str, Any] = {"type": name}
        if sep:
            key = _STRING_ARG.get(name)
            if key is None:
                raise ScorerSpecError(f"scorer {name!r} takes no argument (got {spec!r})")
            out[key] = int(arg) if key == "n" and re.fullmatch(r"-?\d+", arg.strip()) else arg
        spec = out
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ScorerSpecError(f"a scorer is a name such as 'contains' or a mapping with a `type`, not {spec!r}")
    return spec


def make_scorer(spec: str | dict[str, Any]) -> Scorer:
    """A `Scorer` from a spec (see the module docstring); raises `ScorerSpecError` for an unknown or bad one."""
    spec = parse_spec(spec)
    kind = spec["type"]
    if kind not in SCORERS:
        raise ScorerSpecError(f"unknown scorer {kind!r}; choose one of {', '.join(SCORERS)}")
    fn, needs_answer = SCORERS[kind](spec)
    arg = next((spec[k] for k in ("n", "text", "pattern") if k in spec), None)
    name = spec.get("name") or (f"{kind}:{arg}" if arg is not None else kind)
    return Scorer(str(name), fn, needs_answer)


def extract(reply: str, pattern: re.Pattern | None, take: str = "first") -> str:
    """The part of `reply` an answer scorer compares: the first (or last) match of `pattern`, its group 1 when it
    has groups; "" when nothing matches; the whole reply without a pattern."""
    if pattern is None:
        return reply
    matches = list(pattern.finditer(reply))
    if not matches:
        return ""
    m = matches[0] if take == "first" else matches[-1]
    return m.group(1) if pattern.groups else m.group(0)


# --- metrics ------------------------------------------------------------------------------------------------------


def _argmax(xs: Sequence[float]) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def mc_predictions(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(pred, pred_norm) as lm-evaluation-harness computes them: argmax of the summed log-likelihoods, and argmax of
    each divided by its choice's length in characters (the choice text without the delimiter before it)."""
    if len(lls) != len(choices) or not choices:
        raise CorralError("one log-likelihood per choice")
    return _argmax(lls), _argmax([ll / max(1, len(c)) for ll, c in zip(lls, choices, strict=True)])


def perplexity_metrics(nll_sum: float, tokens: int, n_bytes: int) -> dict[str, float]:
    """Token-weighted: ppl = exp(total NLL / tokens); bits per byte and per token (NLL in nats)."""
    if tokens == 0:
        return {"ppl": math.nan, "bits_per_byte": math.nan, "bits_per_token": math.nan}
    return {"ppl": math.exp(nll_sum / tokens), "bits_per_byte": nll_sum / max(1, n_bytes) / math.log(2),
            "bits_per_token": nll_sum / tokens / math.log(2)}


# --- tool calls -------------------------------------------------------------------------------------------------


def calls_match(calls: Sequence[tuple[str, dict[str, Any]]], expected: Sequence[dict[str, Any]]) -> bool:
    """AST match of an answer's calls (name, arguments) against the expected ones, in BFCL's "possible answer"
    form: `{"name": ..., "arguments": {param: [acceptable values]}}`, where "" among the values lets the call leave
    that parameter out. Parallel calls match in any order; no expected call means the answer must make none.
    Strings compare without case and surrounding white space; numbers by value (1 == 1.0, never True)."""
    if len(calls) != len(expected):
        return False
    return any(all(_call_ok(calls[p], expected[i]) for i, p in enumerate(perm))
               for perm in _orders(len(calls)))


def _orders(n: int) -> Any:
    from itertools import permutations

    return permutations(range(n))


def _call_ok(call: tuple[str, dict[str, Any]], want: dict[str, Any]) -> bool:
    name, args = call
    allowed = want.get("arguments") or {}
    if name != want.get("name") or any(k not in allowed for k in args):
        return False
    if any(not any(_same(v, a) for a in allowed[k] if a != "") for k, v in args.items()):
        return False
    return all(k in args for k, values in allowed.items() if "" not in values)


def _same(value: Any, want: Any) -> bool:
    if isinstance(value, bool) or isinstance(want, bool):
        return value is want
    if isinstance(value, int | float) and isinstance(want, int | float):
        return float(value) == float(want)
    if isinstance(value, str) and isinstance(want, str):
        return value.strip().lower() == want.strip().lower()
    return value == want
