"""Labelled guard data: JSONL rows, checked, and turned into the training examples of `corral finetune --task guard`.

A row (the bundled data's format, `corral/guard/data/README.md`):

    {"id": "s7-012", "conversation": [{"role": "user", "content": "..."}], "label": "unsafe",
     "categories": ["S7"], "assess": "user"}

`label` is "safe" or "unsafe"; an unsafe row lists its category codes (at least one, each in the policy), a safe
row none. `assess` ("user", "agent", or "auto", the default: the last message's role) says which message the label
belongs to. Other keys are kept and ignored. Every line is checked before any model work; each problem is reported
with its file, line, what is wrong and how to fix it, all in one message.

A training example is exactly what `Guard` reads and is expected to write: the prompt `Guard.prompt_ids` makes
(`llama_guard.prompt_ids`: the policy's Llama Guard prompt in the model's chat template), then `verdict_ids`: the
verdict `target_text(label, categories)` as the model writes it, and the template's end-of-turn token. Only the
verdict and the end-of-turn token carry loss. `repeat_unsafe` repeats the unsafe examples of a training split
(`corral finetune --guard-repeat-unsafe N`): the categories are learnt from those rows alone.

The bundled sets have names: `train` and `heldout` (`data_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral import jsonl
from corral.errors import InvalidArgumentError
from corral.guard.guard import GuardFileError
from corral.guard.llama_guard import normalize_conversation, prompt_ids, verdict_ids
from corral.guard.taxonomy import Taxonomy, default_taxonomy, load_taxonomy
from corral.tokenizer import Tokenizer
from corral.train.data import IGNORE, Example

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED = {"train": DATA_DIR / "guard_train.jsonl", "heldout": DATA_DIR / "guard_heldout.jsonl"}
POLICY_FILE = "guard_policy.yaml"  # written beside a trained guard's weights; `corral guard` reads it
LABELS = ("safe", "unsafe")
ROW_ASSESS = ("user", "agent", "auto")


class GuardDataError(GuardFileError):
    """Labelled guard rows that cannot be used; the message names the file and every bad line."""


@dataclass
class LabelledRow:
    """One checked row. `categories` are the policy's codes as it spells them, without repeats."""

    id: Any
    conversation: list[dict[str, str]]
    assess: str
    label: str
    categories: list[str]
    line: int


def data_path(name: str | Path) -> Path:
    """The file of a bundled set ("train", "heldout"), or `name` itself as a path. A file of that name wins."""
    p = Path(name)
    if not p.exists() and str(name) in BUNDLED:
        return BUNDLED[str(name)]
    return p


def check_row(obj: Any, taxonomy: Taxonomy, line: int = 0) -> LabelledRow:
    """A parsed JSONL line as a `LabelledRow`; raises ValueError saying what is wrong and how to fix it."""
    if not isinstance(obj, dict):
        raise ValueError('expected an object {"conversation": [...], "label": "safe"|"unsafe", "categories": '
                         '[...]}')
    conv = obj.get("conversation", obj.get("messages"))
    if conv is None:
        raise ValueError("no 'conversation': add the list of {role, content} messages the label is about")
    assess = obj.get("assess", "auto")
    if assess not in ROW_ASSESS:
        raise ValueError(f"'assess' is {assess!r}: use \"user\" (the last user message is judged) or \"agent\" "
                         "(the last assistant reply)")
    try:
        normalize_conversation(conv, assess)
    except InvalidArgumentError as e:
        raise ValueError(str(e)) from None
    label = obj.get("label")
    if label not in LABELS:
        raise ValueError(f"'label' is {label!r}: use \"safe\" or \"unsafe\"" if "label" in obj else
                         "no 'label': add \"label\": \"safe\" or \"unsafe\"")
    cats = obj.get("categories", [])
    codes = ", ".join(taxonomy.codes)
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise ValueError(f"'categories' must be a list of codes such as [\"{taxonomy.codes[0]}\"]")
    if label == "safe" and cats:
        raise ValueError(f"a safe row lists categories {cats}: empty the list, or label the row \"unsafe\"")
    if label == "unsafe" and not cats:
        raise ValueError(f"an unsafe row lists no category: add the codes it violates, e.g. \"categories\": "
                         f"[\"{taxonomy.codes[0]}\"] (the policy's codes: {codes})")
    out: list[str] = []
    for c in cats:
        cat = taxonomy.get(c)
        if cat is None:
            raise ValueError(f"category {c!r} is not in the policy ({taxonomy.source}: {codes}); use one of its "
                             "codes, or give the policy file that defines it")
        if cat.code not in out:
            out.append(cat.code)
    return LabelledRow(obj.get("id", line), conv, assess, label, out, line)


WHAT = "a JSONL file of labelled guard rows (or a bundled set: train, heldout)"


def read_labelled(path: str | Path, taxonomy: Taxonomy | None = None,
                  skip_bad_lines: bool = False) -> tuple[list[LabelledRow], list[str]]:
    """Every row of a labelled JSONL file (or bundled set name), checked against `taxonomy` (default: Llama Guard
    3). Returns (rows, problems: "FILE:LINE: ..."); raises `GuardDataError` naming every bad line unless
    `skip_bad_lines`."""
    tax = taxonomy or default_taxonomy()
    return jsonl.read(data_path(path), lambda obj, n: check_row(obj, tax, n), what=WHAT, error=GuardDataError,
                      skip_bad=skip_bad_lines)


def load_guard_examples(path: str | Path, tok: Tokenizer, max_len: int, taxonomy: Taxonomy | None = None,
                        template: str | None = None, skip_bad_lines: bool = False) -> tuple[list[Example], list[str]]:
    """`load_jsonl` for guard rows: (examples, problems); every bad or too long line is named (`GuardDataError`)
    unless `skip_bad_lines`, which leaves them out."""
    tax = taxonomy or default_taxonomy()

    def parse(obj: Any, n: int) -> Example:
        ex = training_example(tok, check_row(obj, tax, n), tax, template)
        if len(ex.input_ids) > max_len:
            raise ValueError(f"the guard prompt and verdict are {len(ex.input_ids)} tokens, over --max-seq-len "
                             f"{max_len}; raise --max-seq-len or shorten the conversation")
        return ex

    return jsonl.read(data_path(path), parse, what=WHAT, error=GuardDataError,
                      fix="fix them, or pass --skip-bad-lines to leave them out", skip_bad=skip_bad_lines)


@dataclass
class GuardExample(Example):
    unsafe: bool = False  # the row's label


def training_example(tok: Tokenizer, row: LabelledRow, taxonomy: Taxonomy | None = None,
                     template: str | None = None) -> GuardExample:
    """A row as a training example: the guard prompt (no loss), then its verdict and the end-of-turn token."""
    prompt = prompt_ids(tok, row.conversation, taxonomy, row.assess, template)
    reply = verdict_ids(tok, row.label, row.categories, taxonomy, template)
    return GuardExample(prompt + reply, [IGNORE] * len(prompt) + reply, row.line, unsafe=row.label == "unsafe")


def repeat_unsafe(examples: list[Example], n: int) -> list[Example]:
    """Each unsafe example `n` times, the others once (an epoch then sees the category codes n times as often)."""
    return [e for e in examples for _ in range(n if getattr(e, "unsafe", False) else 1)]


# --- the policy a guard was trained on ------------------------------------------------------------------------------


def save_policy(taxonomy: Taxonomy, folder: str | Path) -> Path:
    """Write `taxonomy` as `guard_policy.yaml` in `folder` (a trained adapter or model folder)."""
    import yaml

    cats = [{"code": c.code, "name": c.name, **({"description": c.description} if c.description else {})}
            for c in taxonomy]
    path = Path(folder) / POLICY_FILE
    path.write_text("# The policy this guard was trained on (corral finetune --task guard). corral guard uses it\n"
                    "# when --policy is not given.\n" +
                    yaml.safe_dump({"categories": cats}, sort_keys=False, allow_unicode=True, width=1000),
                    encoding="utf-8")
    return path


def saved_policy(*folders: str | Path | None) -> tuple[Taxonomy, Path] | None:
    """The policy saved beside a trained guard: the first of `folders` (an adapter, a model folder) holding
    `guard_policy.yaml`, read; None if none does. A saved copy of Llama Guard 3's categories gives the default
    taxonomy itself (with the other names a verdict may use for them)."""
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        path = Path(folder) / POLICY_FILE
        if path.is_file():
            taxonomy = load_taxonomy(path)
            return (default_taxonomy() if same_categories(taxonomy, default_taxonomy()) else taxonomy), path
    return None


def same_categories(a: Taxonomy, b: Taxonomy) -> bool:
    """Whether two taxonomies give the same prompt: the same codes, names and descriptions in the same order."""
    key = lambda t: [(c.code, c.name, c.description) for c in t]
    return key(a) == key(b)

