"""The fine-tuning loop on a tiny random model with the default tokenizer: the loss falls, artifacts are written,
gradient accumulation equals a big batch, and a run resumed from its checkpoint repeats the straight run exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from corral.train.loop import FinetuneConfig, finetune

ACME = Path(__file__).resolve().parent.parent / "examples" / "acme" / "train.jsonl"


@pytest.fixture
def tiny_chat(make_tiny_hf, tok):
    """A tiny random Llama over the default model's vocabulary, with its tokenizer and chat template."""
    _, folder = make_tiny_hf(name="tiny-chat", vocab_size=tok.vocab_size)
    (folder / "tokenizer.json").write_text(tok._tok.to_str())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": tok.chat_template, "eos_token": tok.eos_token, "bos_token": tok.bos_token}))
    return folder


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(ACME.read_text().splitlines(keepends=True)[:24]))
    return path


def losses(run: Path, key: str = "loss") -> list[float]:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if key in json.loads(x)]


def cfg(tiny_chat, data, out, **kw) -> FinetuneConfig:
    base = dict(model=str(tiny_chat), data=str(data), out=str(out), batch_size=4, max_steps=12, lr=3e-3,
                warmup_steps=2, max_seq_len=256, save_every=5, eval_every=6, val_split=0.2, lora_r=8, seed=1)
    return FinetuneConfig(**{**base, **kw})


def test_lora_run_learns_and_writes_its_artifacts(tiny_chat, data, tmp_path):
    from corral.model.loader import load_model
    from corral.model.lora import load_adapter

    run = finetune(cfg(tiny_chat, data, tmp_path / "lora", max_steps=15), progress=False)
    ls = losses(run)
    assert len(ls) == 15 and sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 * 0.9, ls
    assert len(losses(run, "val_loss")) == 3  # steps 6, 12, 15
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "adapter" / "adapter_config.json").is_file()
    model = load_model(str(tiny_chat), device="cpu", dtype="float32").model
    assert len(load_adapter(model, run / "adapter")) == 7 * model.config.num_hidden_layers


def test_full_fine_tune_writes_a_loadable_model(tiny_chat, data, tmp_path):
    from corral.model.loader import load_model

    run = finetune(cfg(tiny_chat, data, tmp_path / "full", method="full", max_steps=6, lr=1e-3, val_split=0.0),
                   progress=False)
    out = run / "model"
    shutil.copy(tiny_chat / "tokenizer.json", out / "tokenizer.json")
    before = load_model(str(tiny_chat), device="cpu", dtype="float32").model
    after = load_model(str(out), device="cpu", dtype="float32").model
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(before(ids), after(ids))


def test_gradient_accumulation_equals_the_big_batch(tiny_chat, data, tmp_path):
    a = finetune(cfg(tiny_chat, data, tmp_path / "a", batch_size=4, grad_accum=1, max_steps=3, val_split=0.0),
                 progress=False)
    b = finetune(cfg(tiny_chat, data, tmp_path / "b", batch_size=2, grad_accum=2, max_steps=3, val_split=0.0),
                 progress=False)
    assert losses(a) == pytest.approx(losses(b), rel=1e-4)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_repeats_the_straight_run(tiny_chat, data, tmp_path, method):
    straight = finetune(cfg(tiny_chat, data, tmp_path / "straight", method=method, lora_dropout=0.1),
                        progress=False)
    crashed = tmp_path / "crashed"
    finetune(cfg(tiny_chat, data, crashed, method=method, lora_dropout=0.1), stop_after=7, progress=False)
    assert len(losses(crashed)) == 7  # steps 6-7 ran after the step-5 checkpoint and are lost
    with pytest.raises(Exception, match="--resume"):
        finetune(cfg(tiny_chat, data, crashed, method=method), progress=False)
    finetune(cfg(tiny_chat, data, crashed, method=method, lora_dropout=0.1, resume=True), progress=False)
    assert losses(crashed) == losses(straight)  # exactly: data order, dropout RNG, AdamW state and lr restored
    assert losses(crashed, "val_loss") == losses(straight, "val_loss")


def test_cli_takes_a_yaml_config_and_options_override_it(tiny_chat, data, tmp_path):
    import subprocess
    import sys

    conf = tmp_path / "run.yaml"
    conf.write_text(f"model: {tiny_chat}\ndata: {data}\nmax_steps: 50\nbatch_size: 2\nmax_seq_len: 256\n"
                    f"lora_targets: [q_proj, v_proj]\n")
    out = tmp_path / "cli-run"
    r = subprocess.run([sys.executable, "-m", "corral", "finetune", "--config", str(conf), "--max-steps", "2",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(losses(out)) == 2 and json.loads((out / "config.json").read_text())["batch_size"] == 2
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"] == ["q_proj", "v_proj"]
    conf.write_text("model: x\ndata: y\nlearning_rate: 3\n")
    bad = subprocess.run([sys.executable, "-m", "corral", "finetune", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "learning_rate" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "corral", "finetune", str(tiny_chat)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "data is required" in missing.stderr
