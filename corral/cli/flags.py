"""Config dataclasses to argparse flags and back: the one place options become flags.

A field `max_seq_len` is `--max-seq-len`, its type from the annotation, its help from the field's metadata (or a
help dict, for the training configs) with the default appended. Every flag defaults to "not given" (SUPPRESS), so
`config_from` can stack the config's defaults, then `--config FILE.yaml`, then the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from corral.errors import InvalidArgumentError

_PARSERS: dict[str, type] = {"int": int, "float": float, "str": str}


def _kind(hint: Any) -> tuple[str, bool]:
    """(base type name, optional) of an annotation such as `int | None` or `list[str]`."""
    args = typing.get_args(hint)
    if type(None) in args:
        return _kind(next(a for a in args if a is not type(None)))[0], True
    if typing.get_origin(hint) is list:
        return "list", False
    return getattr(hint, "__name__", str(hint)), False


def _meta(cls: type, f: dataclasses.Field, helps: dict[str, str]) -> dict[str, Any]:
    """The field's metadata, its help from the class in `cls`'s MRO that declared it with one (or from `helps`)."""
    for klass in cls.__mro__:
        base = getattr(klass, "__dataclass_fields__", {}).get(f.name)
        if base is not None and "help" in base.metadata:
            return {**base.metadata, **f.metadata}
    return {"help": helps.get(f.name, ""), **f.metadata}


def add_options(p: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = (),
                helps: dict[str, str] | None = None) -> None:
    """One flag (or positional) per field of the dataclass `cls`, and `--config FILE.yaml` for all of them."""
    hints = typing.get_type_hints(cls)
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
                   help=f"a YAML file of {cls.__name__} fields; options given here override it")
    for f in dataclasses.fields(cls):
        meta = _meta(cls, f, helps or {})
        helptext, comma = meta.pop("help"), meta.pop("comma", False)
        positional = meta.pop("positional", f.name == "model")  # the model is always the first argument
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind, optional = _kind(hints[f.name])
        if not (default is None or default is False or default is dataclasses.MISSING or default in ([], "")):
            helptext += f" (default {','.join(default) if isinstance(default, list) else default})"
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": helptext.replace("%", "%%"), **meta}
        if positional:
            many = kind == "list"
            p.add_argument(f.name, nargs="*" if many else None if f.name in required else "?", **kw)
            continue
        flag = "--" + f.name.replace("_", "-")
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction if optional or default is True else "store_true"
        elif kind == "list" and comma:
            kw["type"] = lambda v: [x.strip() for x in v.split(",") if x.strip() and x.strip().lower() != "none"]
        elif kind == "list" and "action" not in kw:
            kw["nargs"] = "+"
        elif kind != "list":
            kw["type"] = _PARSERS.get(kind, str)
        p.add_argument(flag, required=f.name in required, **kw)


def config_from(args: argparse.Namespace, cls: type, verb: str) -> Any:
    """The verb's config: `cls`'s defaults, overridden by `--config`'s YAML, overridden by the flags given."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path:
        from corral.options import yaml_mapping

        p = Path(path)
        if not p.is_file():
            raise InvalidArgumentError(f"--config {p}: no such file")
        loaded = yaml_mapping(p, "--config", f"{cls.__name__} fields")
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise InvalidArgumentError(f"--config {p}: unknown field(s) {unknown}; see corral {verb} --help")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k in names})
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and values.get(f.name) is None]
    if missing:
        raise InvalidArgumentError(f"{', '.join(missing)} is required (an argument, or in --config)")
    try:
        return cls(**values)
    except TypeError as e:
        raise InvalidArgumentError(f"bad {verb} settings: {e}") from None
