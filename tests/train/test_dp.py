"""Differentially private fine-tuning (corral/train/dp.py): the clipping and noise arithmetic of a DP-SGD step, a
tiny run that stays within its budget and logs the epsilon it spent, resuming without re-spending, and one clear
error for every combination the guarantee does not cover."""

from __future__ import annotations

import json

import pytest
import torch

from corral.train.config import FinetuneConfig
from corral.train.dp import DPSGD
from corral.train.loop import finetune
from tests.test_audit import fact_rows, write

pytest.importorskip("opacus", reason="--dp needs Opacus' accountant (pip install 'corral[dp]')")


def test_each_row_is_clipped_alone_then_summed_and_noised():
    w = torch.nn.Parameter(torch.zeros(4))
    dp = DPSGD([w], n_rows=100, batch=4, steps=10, epsilon=8, delta=None, max_grad_norm=1.0, seed=0)
    assert dp.delta == pytest.approx(1e-3) and dp.q == pytest.approx(0.04) and dp.sigma > 0
    targets = [torch.tensor([3.0, 4.0, 0, 0]), torch.tensor([0, 0, 0.3, 0.4])]  # gradient norms 5 and 0.5
    dp.sigma = 0.0
    opt = torch.optim.SGD([w], lr=1.0)
    loss, clipped = dp.step(lambda t: (w * t).sum(), targets, opt)
    # row 1 clipped to norm 1 (0.6, 0.8), row 2 kept; summed, divided by the expected batch, one SGD step down
    assert torch.allclose(w.detach(), -torch.tensor([0.6, 0.8, 0.3, 0.4]) / 4, atol=1e-5) and clipped == 0.5
    dp.sigma = 2.0
    big = torch.nn.Parameter(torch.zeros(200_000))
    dp.params = [big]
    dp.step(lambda t: big.sum() * 0, [None], torch.optim.SGD([big], lr=1.0))
    assert big.detach().std().item() == pytest.approx(2.0 * 1.0 / 4, rel=0.02)  # sigma x C / expected batch
    assert dp.done == 2 and dp.spent() > 0


def test_the_sample_is_poisson_and_reproducible():
    w = torch.nn.Parameter(torch.zeros(1))
    a, b = (DPSGD([w], 1000, 50, 10, 8, None, 1.0, seed=3) for _ in range(2))
    draws = [a.draw() for _ in range(20)]
    assert draws == [b.draw() for _ in range(20)]
    sizes = [len(d) for d in draws]
    assert 35 < sum(sizes) / len(sizes) < 65 and len(set(sizes)) > 3  # about q x n, and varying


def test_a_tiny_dp_run_spends_its_budget_and_says_so(tiny_chat, tmp_path):
    data = write(tmp_path / "d.jsonl", fact_rows(40, 0))
    cfg = FinetuneConfig(model=str(tiny_chat), data=data, out=str(tmp_path / "run"), dp=True, epsilon=2.0,
                         batch_size=8, epochs=2, lr=1e-2, lora_r=4, max_seq_len=128, precision="fp32",
                         eval_tasks=[], save_every=3, compile=False, canaries=2)
    run = finetune(cfg, progress=False)
    spent = json.loads((run / "dp.json").read_text())
    assert spent["steps_done"] == spent["steps_planned"] == 2 * 42 // 8  # 40 rows and 2 canaries
    assert 1.5 < spent["epsilon_spent"] <= 2.0 + 1e-6 and spent["delta"] == pytest.approx(1 / 420)
    eps = [json.loads(x)["epsilon"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(spent["epsilon_spent"])
    assert (run / "adapter" / "adapter_config.json").exists()
    conf = json.loads((run / "config.json").read_text())
    assert (conf["packing"], conf["augment"], conf["replay"], conf["dp"]) == (False, 0, 0.0, True)


def test_a_resumed_dp_run_counts_the_steps_already_spent(tiny_chat, tmp_path):
    data = write(tmp_path / "d.jsonl", fact_rows(24, 0))
    kw = dict(model=str(tiny_chat), data=data, out=str(tmp_path / "run"), dp=True, epsilon=4.0, batch_size=6,
              epochs=2, lora_r=4, max_seq_len=128, precision="fp32", eval_tasks=[], save_every=2, compile=False)
    finetune(FinetuneConfig(**kw), stop_after=4, progress=False)
    half = json.loads((tmp_path / "run" / "dp.json").read_text())
    finetune(FinetuneConfig(**kw, resume=True), progress=False)
    whole = json.loads((tmp_path / "run" / "dp.json").read_text())
    assert half["steps_done"] == 4 and whole["steps_done"] == 8
    assert half["epsilon_spent"] < whole["epsilon_spent"] <= 4.0 + 1e-6


@pytest.mark.parametrize("args, needles", [
    (["--packing"], ["--dp cannot pack rows"]),
    (["--augment", "2"], ["--dp cannot use the teacher's augmentation", "--augment 0"]),
    (["--replay", "0.2"], ["--dp cannot mix in replay rows"]),
    (["--method", "full"], ["--dp trains LoRA adapters"]),
    (["--grad-accum", "2"], ["--grad-accum"]),
    (["--epsilon", "0"], ["--epsilon 0"]),
    (["--delta", "0.5"], ["--delta 0.5", "below 1 / training rows"]),
    (["--max-grad-norm", "-1"], ["--max-grad-norm -1"]),
])
def test_what_dp_cannot_guarantee_is_one_clear_error(tiny_chat, tmp_path, capsys, args, needles):
    from corral.cli import main
    from tests.helpers import assert_clean_error

    data = write(tmp_path / "d.jsonl", fact_rows(8, 0))
    code = main(["finetune", str(tiny_chat), "--data", data, "--out", str(tmp_path / "run"), "--dp",
                 "--eval-tasks", "", *args])
    assert_clean_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "run" / "adapter").exists()


def test_without_opacus_dp_is_one_clear_error_before_any_model_loads(monkeypatch):
    import sys

    from corral.errors import InvalidArgumentError

    monkeypatch.setitem(sys.modules, "opacus", None)  # as if not installed
    with pytest.raises(InvalidArgumentError, match=r"pip install 'corral\[dp\]'"):
        FinetuneConfig(model="m", data="d.jsonl", dp=True).check()
