"""The options: each declared once (a field of one group), the same config from flags, from `--config` YAML and
from Python, and a verb run from Python without argparse."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from corral.cli import _verbs, main, parse
from corral.cli.generate import GenerateConfig, generate
from corral.cli.serve import BatchConfig, ServeConfig, batch
from tests.helpers import assert_clean_error

CLI = Path(__file__).resolve().parents[2] / "corral" / "cli"


def test_every_option_is_declared_once():
    """A field with help text lives on one class; verbs redeclare a field only to change its default."""
    declared: dict[str, set[str]] = {}
    classes = {c for cls, *_ in _verbs().values() if cls is not None for c in cls.__mro__}
    for c in classes:
        for f in getattr(c, "__dataclass_fields__", {}).values():
            if "help" in f.metadata and f.name in vars(c).get("__annotations__", {}):
                declared.setdefault(f.name, set()).add(c.__qualname__)
    twice = {name: sorted(owners) for name, owners in declared.items() if len(owners) > 1}
    assert not twice, f"options declared on more than one class: {twice}"
    assert len(declared) > 60
    # flags are made in one place only
    made = [p.name for p in CLI.glob("*.py") if "add_argument(" in p.read_text() and p.name != "flags.py"]
    assert not made, f"modules that declare flags by hand: {made}"


def test_no_cli_module_is_over_400_lines():
    long = {p.name: n for p in CLI.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_flags_yaml_and_python_make_the_same_config(tmp_path):
    conf = tmp_path / "serve.yaml"
    conf.write_text("model: default\nmax_batch: 4\napi_key: [k1]\nguard_threshold: 0.7\nport: 9000\n")
    from_yaml = parse(["serve", "--config", str(conf), "--port", "9001"])  # a flag given overrides the file
    from_flags = parse(["serve", "default", "--max-batch", "4", "--api-key", "k1", "--guard-threshold", "0.7",
                        "--port", "9001"])
    from_python = ServeConfig(model="default", max_batch=4, api_key=["k1"], guard_threshold=0.7, port=9001)
    assert from_yaml == from_flags == from_python
    assert from_python.max_seq_len == 2048 and GenerateConfig().max_seq_len == 4096  # a verb's own default
    assert parse(["chat"]).temperature == 0.7 and parse(["generate", "m", "hi"]).temperature == 0.0


@pytest.mark.parametrize("yaml, needle", [("port: [1, 2\n", "not valid YAML"), ("- 1\n", "expected a mapping"),
                                          ("prot: 1\n", "unknown field(s) ['prot']")])
def test_a_bad_config_file_is_one_clear_error(tmp_path, capsys, yaml, needle):
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml)
    assert_clean_error(main(["serve", "--config", str(conf)]), capsys.readouterr().err, "--config", needle)


def test_group_checks_all_run():
    """`check()` runs every group's checks, whatever the order of a config's bases."""
    from corral.errors import InvalidArgumentError

    for bad, flag in ((dict(max_batch=0), "--max-batch"), (dict(max_seq_len=8), "--max-seq-len"),
                      (dict(threads=0), "--threads"), (dict(prefill_chunk=1), "--prefill-chunk")):
        with pytest.raises(InvalidArgumentError, match=flag):
            ServeConfig(**bad).check()


def test_verbs_run_from_python_without_argparse(make_tiny_hf, tok, tmp_path, capsys):
    _, folder = make_tiny_hf(vocab_size=tok.vocab_size)
    (folder / "tokenizer.json").write_text(tok._tok.to_str())
    assert generate(GenerateConfig(model=str(folder), prompt="hello", max_tokens=5, stats=True)) == 0
    out = capsys.readouterr()
    assert out.out.endswith("\n") and "5 generated" in out.err
    inp, outp = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
                   '"body": {"prompt": "hi", "max_tokens": 3}}\n')
    assert batch(BatchConfig(model=str(folder), input=str(inp), output=str(outp), max_batch=2, max_seq_len=64)) == 0
    assert '"custom_id": "a"' in outp.read_text()
    # --kv-dtype q8_0 packs blocks of 32 numbers: a head dim of 16 is one clear error
    capsys.readouterr()
    code = main(["batch", str(folder), str(inp), str(outp), "--kv-dtype", "q8_0"])
    assert_clean_error(code, capsys.readouterr().err, "--kv-dtype q8_0", "multiple of 32")


def test_every_verb_module_has_a_docstring_and_its_verbs():
    for family in ("generate", "train", "serve", "eval", "guard", "redteam"):
        mod = importlib.import_module(f"corral.cli.{family}")
        assert mod.__doc__ and mod.VERBS
        for cls, fn, *_ in mod.VERBS.values():
            assert fn.__doc__, fn
            assert cls is None or dataclasses.is_dataclass(cls)
