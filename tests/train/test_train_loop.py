"""The fine-tuning loop on a tiny random model with the default tokenizer: the loss falls, artifacts are written,
gradient accumulation equals a big batch, and a run resumed from its checkpoint repeats the straight run exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from corral.train.loop import FinetuneConfig, finetune

ACME = Path(__file__).resolve().parents[2] / "examples" / "acme" / "train.jsonl"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(ACME.read_text().splitlines(keepends=True)[:24]))
    return path


def losses(run: Path, key: str = "loss") -> list[float]:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if key in json.loads(x)]


def cfg(tiny_chat, data, out, **kw) -> FinetuneConfig:
    base = dict(model=str(tiny_chat), data=str(data), out=str(out), batch_size=4, max_steps=12, lr=3e-3,
                warmup_steps=2, max_seq_len=256, save_every=5, eval_every=6, val_split=0.2, lora_r=8, seed=1,
                precision="fp32",  # exact comparisons; bf16 has its own test
                augment=0, replay=0.0, eval_tasks=[],  # the loop alone; the recipe around it: test_recipe.py
                packing=False, lora_alpha=32.0, lora_dropout=0.0)
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
    if method == "lora":  # the kept weights too: LoRA runs keep the moving average, saved in the checkpoint
        from safetensors.torch import load_file

        assert json.loads((crashed / "config.json").read_text())["ema"] == 0.1
        a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (crashed, straight))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_moving_average_is_what_is_kept():
    from corral.train.loop import MovingAverage

    w = torch.nn.Parameter(torch.zeros(3))
    avg = MovingAverage([w], share=0.5, total=40)  # a time constant of 20 steps: decay 0.95
    assert avg.decay == pytest.approx(0.95)
    with torch.no_grad():
        w.fill_(1.0)
    avg.update([w], step=1)  # young: weight 1 - 2/11
    assert torch.allclose(avg.avg[0], torch.full((3,), 9 / 11))
    for step in range(2, 200):
        avg.update([w], step)
    assert torch.allclose(avg.avg[0], torch.ones(3), atol=1e-3)
    with torch.no_grad():
        w.fill_(5.0)
    avg.update([w], step=200)  # old: weight 1 - 0.95
    expected = avg.avg[0].clone()
    assert torch.allclose(expected, torch.full((3,), 1.0 + 0.05 * 4.0), atol=1e-3)
    with avg.swapped([w]):
        assert torch.equal(w.detach(), expected)
    assert torch.equal(w.detach(), torch.full((3,), 5.0))  # the trained weights back after the block


def test_lora_defaults_keep_an_average_full_fine_tunes_do_not():
    from corral.errors import InvalidArgumentError

    lora = FinetuneConfig(model="m", data="d")
    lora.check()
    full = FinetuneConfig(model="m", data="d", method="full")
    full.check()
    assert (lora.ema, full.ema) == (0.1, 0.0)
    with pytest.raises(InvalidArgumentError, match="--ema 1.0"):
        FinetuneConfig(model="m", data="d", ema=1.0).check()


def test_cli_takes_a_yaml_config_and_options_override_it(tiny_chat, data, tmp_path):
    import subprocess
    import sys

    conf = tmp_path / "run.yaml"
    conf.write_text(f"model: {tiny_chat}\ndata: {data}\nmax_steps: 50\nbatch_size: 2\nmax_seq_len: 256\n"
                    f"lora_targets: [q_proj, v_proj]\naugment: 0\nreplay: 0\n")
    out = tmp_path / "cli-run"
    r = subprocess.run([sys.executable, "-m", "corral", "finetune", "--config", str(conf), "--max-steps", "2",
                        "--eval-tasks", "none", "--no-compile", "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(losses(out)) == 2 and json.loads((out / "config.json").read_text())["batch_size"] == 2
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"] == ["q_proj", "v_proj"]
    conf.write_text("model: x\ndata: y\nlearning_rate: 3\n")
    bad = subprocess.run([sys.executable, "-m", "corral", "finetune", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "learning_rate" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "corral", "finetune", str(tiny_chat)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--data FILE or --docs FILE" in missing.stderr


def test_packed_rows_attend_within_their_own_example(tiny_chat, tok):
    """A packed row's logits equal each example's own forward: positions restart, attention is block-diagonal."""
    from corral.model.loader import load_model
    from corral.train.data import collate, encode_example, pack

    model = load_model(str(tiny_chat), device="cpu", dtype="float32").model
    exs = [encode_example(json.loads(x), tok, line=i) for i, x in enumerate(ACME.read_text().splitlines()[:3])]
    rows = pack(exs, seq_len=sum(len(e.input_ids) for e in exs) + 5)
    assert len(rows) == 1
    b = collate(rows, torch.device("cpu"))
    with torch.no_grad():
        packed = model(b["ids"], positions=b["positions"], doc_ids=b["doc_ids"])[0]
        start = 0
        for e in exs:
            alone = model(torch.tensor([e.input_ids]))[0]
            torch.testing.assert_close(packed[start: start + len(e.input_ids)], alone, atol=1e-5, rtol=1e-5)
            start += len(e.input_ids)
        unmasked = model(b["ids"], positions=b["positions"])[0]  # the same row without the document mask
    assert not torch.allclose(unmasked[len(exs[0].input_ids):], packed[len(exs[0].input_ids):], atol=1e-3)


def test_packing_run_learns(tiny_chat, data, tmp_path):
    run = finetune(cfg(tiny_chat, data, tmp_path / "packed", packing=True, batch_size=2, max_seq_len=512,
                       max_steps=12, val_split=0.0), progress=False)
    ls = losses(run)
    assert len(ls) == 12 and sum(ls[-3:]) < sum(ls[:3]) * 0.9, ls


def test_activation_checkpointing_changes_nothing_but_memory(tiny_chat, data, tmp_path):
    plain = finetune(cfg(tiny_chat, data, tmp_path / "plain", max_steps=4, lora_dropout=0.1, val_split=0.0),
                     progress=False)
    ckpt = finetune(cfg(tiny_chat, data, tmp_path / "ckpt", max_steps=4, lora_dropout=0.1, val_split=0.0,
                        grad_checkpointing=True), progress=False)
    assert losses(ckpt) == pytest.approx(losses(plain), rel=1e-6)  # recomputation replays the dropout masks


def test_bf16_autocast_tracks_fp32(tiny_chat, data, tmp_path):
    fp32 = finetune(cfg(tiny_chat, data, tmp_path / "fp32", max_steps=6, val_split=0.0), progress=False)
    bf16 = finetune(cfg(tiny_chat, data, tmp_path / "bf16", max_steps=6, val_split=0.0, precision="bf16"),
                    progress=False)
    assert losses(bf16) != losses(fp32)  # it did run in bf16
    assert losses(bf16) == pytest.approx(losses(fp32), rel=0.02)


def test_qlora_trains_on_a_4bit_base_and_saves_a_plain_adapter(tiny_chat, data, tmp_path):
    from corral.model.loader import load_model
    from corral.model.lora import load_adapter
    from corral.model.quant import Q4TrainLinear

    run = finetune(cfg(tiny_chat, data, tmp_path / "qlora", method="qlora", max_steps=15), progress=False)
    ls = losses(run)
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 * 0.9, ls
    meta = json.loads((run / "config.json").read_text())
    # the tiny model is mostly embedding (kept fp32); the projections shrink 32 -> 5 bits
    assert meta["model_mb"] < meta["fp32_model_mb"]
    model = load_model(str(tiny_chat), device="cpu", dtype="float32").model
    assert len(load_adapter(model, run / "adapter")) == 7 * model.config.num_hidden_layers
    assert not any(isinstance(m, Q4TrainLinear) for m in model.modules())


def test_kill_9_mid_run_then_resume_repeats_the_straight_run(tiny_chat, data, tmp_path):
    """The real crash: the CLI process is SIGKILLed mid-run (maybe mid-checkpoint), `--resume` continues it."""
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "corral", "finetune", str(tiny_chat), "--data", str(data), "--max-steps", "60",
            "--batch-size", "2", "--save-every", "4", "--lr", "1e-3", "--lora-r", "4", "--lora-dropout", "0.1",
            "--max-seq-len", "256", "--seed", "3",
            "--augment", "0", "--replay", "0", "--eval-tasks", "none", "--no-packing", "--no-compile"]  # the loop
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([*args, "--out", str(straight)], check=True, capture_output=True, timeout=600, env=env)
    crashed = tmp_path / "crashed"
    p = subprocess.Popen([*args, "--out", str(crashed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env)
    metrics = crashed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 23):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert 23 <= killed_at < 60, "the run was not killed mid-way"
    r = subprocess.run([*args, "--out", str(crashed), "--resume"], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert losses(crashed) == losses(straight)
    assert (crashed / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (straight / "adapter" / "adapter_model.safetensors").read_bytes()


def one_and_two_processes(args: list[str], tmp_path: Path) -> tuple[Path, Path, str]:
    """Run `corral ARGS` as 1 process with batch 4 (into tmp_path/one) and under torchrun as 2 processes with
    batch 2 each (FSDP2 on gloo, into tmp_path/two); both must succeed. Returns (one, two, the 1-process stdout)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, "-m", "corral", *args, "--batch-size", "4", "--out", str(one)],
                        capture_output=True, text=True, timeout=600, env=env)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         "-m", "corral", *args, "--batch-size", "2", "--out", str(two)],
                        capture_output=True, text=True, timeout=600, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    return one, two, r1.stdout


def test_torchrun_fsdp2_two_processes_match_one(tiny_chat, data, tmp_path):
    """FSDP2 on CPU (gloo): 2 processes x batch 2 follow 1 process x batch 4, step by step."""
    common = ["finetune", str(tiny_chat), "--data", str(data), "--max-steps", "6", "--lr", "3e-3",
              "--max-seq-len", "256", "--warmup-steps", "2", "--lora-r", "8", "--seed", "1", "--device", "cpu",
              "--precision", "fp32", "--augment", "0", "--replay", "0", "--eval-tasks", "none", "--no-packing",
              "--no-compile"]
    one, two, _ = one_and_two_processes(common, tmp_path)
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    assert losses(two)[-1] < losses(two)[0]
    from safetensors.torch import load_file

    a, b = load_file(str(one / "adapter" / "adapter_model.safetensors")), \
        load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


def test_loss_on_kept_positions_equals_the_full_head(tiny_chat, tok):
    """The head runs only where a label applies; the loss equals cross-entropy over the full logits."""
    import torch.nn.functional as F

    from corral.model.loader import load_model
    from corral.train.data import IGNORE, collate, encode_example
    from corral.train.loop import _loss

    model = load_model(str(tiny_chat), device="cpu", dtype="float32").model
    exs = [encode_example(json.loads(x), tok, line=i) for i, x in enumerate(ACME.read_text().splitlines()[:3])]
    b = collate(exs, torch.device("cpu"))
    with torch.no_grad():
        logits = model(b["ids"])
        want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
        got = _loss(model, b, "sum")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_compiled_layers_train_like_eager_ones(tiny_chat, data, tmp_path, method):
    from torch._dynamo.utils import counters

    eager = finetune(cfg(tiny_chat, data, tmp_path / "eager", method=method, max_steps=3, val_split=0.0),
                     progress=False)
    counters.clear()
    compiled = finetune(cfg(tiny_chat, data, tmp_path / "compiled", method=method, max_steps=3, val_split=0.0,
                            compile=True), progress=False)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did compile
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)  # fused kernels round a little differently
    saved = compiled / "model" if method == "full" else compiled / "adapter"
    assert any(saved.glob("*.safetensors"))


@pytest.mark.real_defaults
def test_sft_compiles_by_default_guard_and_distill_do_not():
    from corral.cli import parse
    from corral.distill.config import DistillConfig

    sft, full, guard = (FinetuneConfig(model="m", data="d", **kw) for kw in ({}, {"method": "full"},
                                                                            {"task": "guard"}))
    for c in (sft, full, guard):
        c.check()
    distill = DistillConfig(model="m", data="d", student_layers=2)
    distill.check()
    assert (sft.compile, full.compile, guard.compile, distill.compile) == (True, True, False, False)
    assert parse(["finetune", "m", "--data", "d", "--no-compile"]).compile is False


def test_a_machine_where_torch_compile_cannot_build_trains_eager(tiny_chat, data, tmp_path, monkeypatch, caplog):
    """No C++ compiler (or no Triton): the probe fails before any layer is compiled, the run says so once and
    trains eager, with the eager run's losses."""
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(*a, **k):
        def fn(*x):
            raise BackendCompilerFailed(lambda *y: None, RuntimeError("InvalidCxxCompiler: No working C++ compiler "
                                                                      "found in torch._inductor.config.cpp.cxx"))
        return fn

    eager = finetune(cfg(tiny_chat, data, tmp_path / "eager", max_steps=3, val_split=0.0), progress=False)
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="corral.train.loop"):
        fallback = finetune(cfg(tiny_chat, data, tmp_path / "fallback", max_steps=3, val_split=0.0, compile=True),
                            progress=False)
    said = [r.getMessage() for r in caplog.records if "torch.compile cannot build" in r.getMessage()]
    assert len(said) == 1 and "C++ compiler" in said[0] and "--no-compile" in said[0]
    assert losses(fallback) == losses(eager)


def test_selection_answers_eager_beside_compiled_layers(tiny_chat, data, tmp_path, monkeypatch):
    """The held-out questions are decoded with a KV cache at new shapes every time: through the compiled layers
    that would be a new graph per shape, so selection runs them eager (no graph made while it answers)."""
    from torch._dynamo.utils import counters

    from corral.train import loop

    rows = [{"messages": [{"role": "user", "content": f"When does shift {i} start?"}], "answer": ["16:40"]}
            for i in range(3)]
    graphs = []
    real_score = loop.Selector.score

    def score(self, model, names, step):
        assert model.model.layers[0]._compiled_call_impl is not None  # the training step runs compiled layers
        before = counters["stats"]["unique_graphs"]
        acc = real_score(self, model, names, step)
        graphs.append(counters["stats"]["unique_graphs"] - before)
        return acc

    monkeypatch.setattr(loop.Selector, "score", score)
    counters.clear()
    c = cfg(tiny_chat, data, tmp_path / "sel", max_steps=4, select_every=2, val_split=0.0, compile=True)
    c.check()
    run = loop.run_loop(c, loop.Dist("cpu"), None, False, select=rows)
    assert graphs == [0, 0]
    assert json.loads((run / "best" / "best.json").read_text())["step"] in (2, 4)


def test_a_task_given_to_finetune_is_the_data_side(tiny_chat, data, tmp_path):
    """The loop's data side is the `Task` the caller passes (guard training's way in): its examples are the ones
    trained on, its training split is used, and it is called to save beside the weights."""
    from corral.errors import InvalidArgumentError
    from corral.train.loop import Task

    calls = []

    class Doubling(Task):
        def load(self, cfg, path, tok, template):
            calls.append(("load", Path(path).name))
            return super().load(cfg, path, tok, template)

        def training_split(self, cfg, train):
            calls.append(("split", len(train)))
            return train + train

        def save(self, cfg, folder):
            calls.append(("save", folder.name))
            (folder / "task.txt").write_text("mine")

    run = finetune(cfg(tiny_chat, data, tmp_path / "t", max_steps=2, val_split=0.0), progress=False, task=Doubling())
    assert [c[0] for c in calls] == ["load", "split", "save"] and calls[2][1] == "adapter"
    assert (run / "adapter" / "task.txt").read_text() == "mine"
    with pytest.raises(InvalidArgumentError, match="task 'guard' trains through its own Task"):
        finetune(cfg(tiny_chat, data, tmp_path / "g", task="guard"), progress=False)
