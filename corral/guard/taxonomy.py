"""Safety taxonomies: the hazard categories a guard model checks for, by code ("S1") and name.

The default is Llama Guard 3's fourteen, based on the MLCommons hazard taxonomy. Their names are the short ones
Llama Guard 3's prompt uses ("S3: Sex Crimes."), as in its reference prompt and chat template; the MLCommons
model-card names ("Sex-Related Crimes") are kept as aliases, so a verdict that spells a category out is still read.

Your own policy is a YAML file:

    categories:
      - name: Off-topic                       # code defaults to S1..Sn by position
        description: |                        # optional; printed under the name in the prompt
          Questions unrelated to our product.
      - code: PII
        name: Personal data

Codes are one word (letters, digits, `_`, `-`: the verdict lists them comma-separated) and unique regardless of
case; names are unique and not empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import CorralError


class TaxonomyError(CorralError):
    """A policy file that cannot be used; the message names the file, the entry and the fix."""


CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    description: str = ""
    aliases: tuple[str, ...] = ()  # other names a verdict may use for it (never printed in the prompt)


@dataclass(frozen=True)
class Taxonomy:
    categories: tuple[Category, ...]
    source: str = "Llama Guard 3"  # where it came from: the default's name or the policy file's path
    _by_code: dict[str, Category] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_code", {c.code.lower(): c for c in self.categories})

    def __iter__(self) -> Iterator[Category]:
        return iter(self.categories)

    def __len__(self) -> int:
        return len(self.categories)

    @property
    def codes(self) -> list[str]:
        return [c.code for c in self.categories]

    def get(self, code: str) -> Category | None:
        """The category of a code, any letter case; None if the taxonomy has no such code."""
        return self._by_code.get(code.strip().lower())


# Llama Guard 3's categories, in the words of its prompt (llama-stack's llama_guard.py, the HF chat template of
# meta-llama/Llama-Guard-3-8B); aliases: the MLCommons names of the model card's hazard table.
LLAMA_GUARD_3 = Taxonomy(tuple(Category(f"S{i}", name, "", aliases) for i, (name, aliases) in enumerate([
    ("Violent Crimes", ()),
    ("Non-Violent Crimes", ()),
    ("Sex Crimes", ("Sex-Related Crimes",)),
    ("Child Exploitation", ("Child Sexual Exploitation",)),
    ("Defamation", ()),
    ("Specialized Advice", ()),
    ("Privacy", ()),
    ("Intellectual Property", ()),
    ("Indiscriminate Weapons", ()),
    ("Hate", ()),
    ("Self-Harm", ("Suicide & Self-Harm", "Suicide and Self-Harm")),
    ("Sexual Content", ()),
    ("Elections", ()),
    ("Code Interpreter Abuse", ()),
], start=1)))


def default_taxonomy() -> Taxonomy:
    """Llama Guard 3's fourteen categories, S1 to S14."""
    return LLAMA_GUARD_3


def load_taxonomy(path: str | Path | None) -> Taxonomy:
    """The categories of a policy YAML file (see the module docstring); None gives the default taxonomy."""
    if path is None:
        return default_taxonomy()
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TaxonomyError(f"{p}: no such policy file; pass a YAML file with a 'categories' list "
                            "(or leave --policy out for Llama Guard 3's S1-S14)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise TaxonomyError(f"{p}: not valid YAML ({problem}{at}); fix the syntax") from None
    except UnicodeDecodeError:
        raise TaxonomyError(f"{p}: not UTF-8 text; save the policy file as UTF-8 YAML") from None
    return taxonomy_from_dict(data, str(p))


def taxonomy_from_dict(data: Any, where: str = "policy") -> Taxonomy:
    """A taxonomy from `{"categories": [{"code"?, "name", "description"?}, ...]}` (a parsed policy file).
    A list item may also be a plain string: a name. Raises `TaxonomyError` naming `where` and the bad entry."""
    if not isinstance(data, dict) or "categories" not in data:
        raise TaxonomyError(f"{where}: expected a mapping with a 'categories' list, e.g.\n"
                            "categories:\n  - name: Violent Crimes\n    description: ...")
    extra = sorted(str(k) for k in data if k != "categories")
    if extra:
        raise TaxonomyError(f"{where}: unknown key(s) {', '.join(extra)}; a policy file holds only 'categories'")
    items = data["categories"]
    if not isinstance(items, list) or not items:
        raise TaxonomyError(f"{where}: 'categories' must be a non-empty list of {{code, name, description}} entries")
    cats: list[Category] = []
    seen_codes: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for i, item in enumerate(items):
        at = f"{where}: categories[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise TaxonomyError(f"{at}: expected a mapping with 'name' (and optional 'code', 'description'), "
                                f"got {type(item).__name__}")
        unknown = sorted(str(k) for k in item if k not in ("code", "name", "description"))
        if unknown:
            raise TaxonomyError(f"{at}: unknown key(s) {', '.join(unknown)}; allowed: code, name, description")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TaxonomyError(f"{at}: 'name' is missing or empty; give every category a name")
        name = " ".join(name.split())
        if "\n" in item["name"].strip():
            raise TaxonomyError(f"{at}: the name is several lines; put the detail in 'description'")
        code = item.get("code", f"S{i + 1}")
        if isinstance(code, int) and not isinstance(code, bool):
            code = str(code)
        if not isinstance(code, str) or not CODE_RE.match(code.strip()):
            raise TaxonomyError(f"{at}: code {code!r} is not one word of letters, digits, '_' or '-' "
                                "(the verdict lists codes comma-separated); e.g. S1 or PII")
        code = code.strip()
        desc = item.get("description", "")
        if desc is None:
            desc = ""
        if not isinstance(desc, str):
            raise TaxonomyError(f"{at}: 'description' must be text")
        if code.lower() in seen_codes:
            j = seen_codes[code.lower()]
            hint = (" (codes left out default to S1..Sn by position)" if "code" not in item or
                    "code" not in items[j] else "")
            raise TaxonomyError(f"{at}: duplicate code {code!r}, also categories[{j}]{hint}; give each category "
                                "its own code")
        if name.lower() in seen_names:
            raise TaxonomyError(f"{at}: duplicate name {name!r}, also categories[{seen_names[name.lower()]}]; "
                                "merge them or rename one")
        seen_codes[code.lower()] = i
        seen_names[name.lower()] = i
        cats.append(Category(code, name, desc.strip()))
    return Taxonomy(tuple(cats), where)
