"""`corral <verb>`: the command line, one module per family of verbs, each verb a config dataclass (its flags,
its `--config` YAML and its Python API, `corral.options`) and a function of it. Verbs import what they need when
they run, so `corral --help` stays quick.

Owns: parsing and printing. Must not be imported by any other corral package. Errors a user can cause
(`CorralError`) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from corral.errors import CorralError

FAMILIES = ("generate", "train", "serve", "eval", "guard", "redteam")


def _verbs() -> dict[str, tuple[Any, ...]]:
    """verb -> (config class or None, function, help, required fields[, description[, help dict]])."""
    import importlib

    out: dict[str, tuple[Any, ...]] = {}
    for family in FAMILIES:
        out.update(importlib.import_module(f"corral.cli.{family}").VERBS)
    return out


def build_parser() -> argparse.ArgumentParser:
    from corral.cli.flags import add_options

    ap = argparse.ArgumentParser(prog="corral", description="Own your language model: run, serve, fine-tune, "
                                 "evaluate, distill and guard Llama-family models on your own hardware.")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (cls, fn, helptext, required, *more) in _verbs().items():
        description = more[0] if more else None
        p = sub.add_parser(verb, help=helptext, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter if description and "\n" in description
                           else argparse.HelpFormatter)
        if cls is not None:
            add_options(p, cls, required=required, helps=more[1] if len(more) > 1 else None)
        p.set_defaults(config_class=cls, run=fn)
    return ap


def parse(argv: list[str]) -> Any:
    """The config a command line asks for (the verb's dataclass), without running it."""
    from corral.cli.flags import config_from

    args = build_parser().parse_args(argv)
    return config_from(args, args.config_class, args.verb) if args.config_class else None


def main(argv: list[str] | None = None) -> int:
    from corral.cli.flags import config_from
    from corral.egress import install_from_env

    install_from_env()  # CORRAL_NO_EGRESS=1: refuse every connection off this machine (corral/egress.py)

    args = build_parser().parse_args(argv)
    try:
        cfg = config_from(args, args.config_class, args.verb) if args.config_class else None
        return args.run(cfg)
    except CorralError as e:
        print(f"corral: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
