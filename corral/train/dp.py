"""Differentially private fine-tuning (`corral finetune --dp --epsilon E --delta D [--max-grad-norm C]`): DP-SGD
(Abadi et al., 2016) on the LoRA weights, with Opacus' RDP accountant.

Each step draws a Poisson sample of the training rows (each row in with probability q = batch_size / rows), takes
each sampled row's gradient alone, clips it to norm C, sums them, adds Gaussian noise of standard deviation sigma x C
and divides by the expected batch size; AdamW then steps on that. Sigma is the smallest that keeps the whole run
(epochs x rows / batch_size steps) within (epsilon, delta), from Opacus' accountant; the epsilon spent so far is
logged every step (metrics.jsonl) and the run's guarantee written to OUT/dp.json.

Why per-row backward passes rather than Opacus' GradSampleModule or torch.func's vmap: a row's gradient is then
exact for any layer corral trains (LoRA over fused or 4-bit frozen layers, which Opacus' per-layer hooks do not
know), at the price of batching, which `corral finetune` does not use on CPU anyway (batch size 1 by default).

The privacy unit is one training row. What would break it is refused with one clear error (`check`): packing
(several users' rows in one sample), the teacher's augmentation (rewordings of a row are more rows from the same
person), replay (trained towards another objective), gradient accumulation across draws, full fine-tuning (not
implemented), and several processes (FSDP). The noise comes from the operating system's randomness, never from
`--seed`, which is public.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from corral.errors import InvalidArgumentError

# --dp's defaults for the fields left unset: a noise of sigma C / batch per coordinate is outvoted by a bigger batch,
# and it grows with the trainable weights' count (the clipped signal does not), so a smaller LoRA rank.
DP_DEFAULTS = {"packing": False, "batch_size": 32, "lora_r": 8, "lora_alpha": 16.0}


def check(cfg: Any) -> None:
    """Refuse what DP-SGD here cannot guarantee; called by `FinetuneConfig.check` when `dp` is set."""
    problems = [
        (cfg.task != "sft", "--dp goes with --task sft (the default)"),
        (cfg.method == "full", "--dp trains LoRA adapters (--method lora or qlora), not every weight"),
        (cfg.packing, "--dp cannot pack rows: a packed sample holds several users' rows, so one row's gradient "
                      "could not be clipped alone; drop --packing"),
        (cfg.augment > 0, "--dp cannot use the teacher's augmentation: each rewording is one more row from the same "
                          "person, outside the guarantee; pass --augment 0"),
        (cfg.replay > 0, "--dp cannot mix in replay rows; pass --replay 0"),
        (bool(cfg.docs), "--dp trains on rows, not --docs: a document's chunks and questions share a source"),
        (cfg.grad_accum != 1, "--dp draws one Poisson sample per step; use --batch-size, not --grad-accum"),
        (not (cfg.epsilon > 0), f"--epsilon {cfg.epsilon}: a privacy budget > 0 (e.g. 8, or 1 for a strict one)"),
        (cfg.delta is not None and not (0 < cfg.delta < 1), f"--delta {cfg.delta}: between 0 and 1, well below "
                                                              "1 / training rows"),
        (not (cfg.max_grad_norm > 0), f"--max-grad-norm {cfg.max_grad_norm}: a clipping norm > 0"),
    ]
    for bad, msg in problems:
        if bad:
            raise InvalidArgumentError(msg)
    try:  # before any model loads
        import opacus  # noqa: F401
    except ImportError:
        raise InvalidArgumentError("--dp needs Opacus for its privacy accountant: pip install 'corral[dp]'") from None


class DPSGD:
    """The per-step work of DP-SGD for `params` over `n_rows` training rows (see the module docstring)."""

    def __init__(self, params: list[torch.Tensor], n_rows: int, batch: int, steps: int, epsilon: float,
                 delta: float | None, max_grad_norm: float, seed: int):
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier

        if n_rows < 2:
            raise InvalidArgumentError("--dp needs at least 2 training rows")
        self.params, self.n_rows, self.batch, self.C = params, n_rows, min(batch, n_rows), max_grad_norm
        self.q = self.batch / n_rows
        # δ well below 1/n: a mechanism that publishes one whole row with probability δ would otherwise pass
        self.delta = delta if delta is not None else 1.0 / (10 * n_rows)
        if self.delta >= 1.0 / n_rows:
            raise InvalidArgumentError(f"--delta {self.delta}: must be below 1 / training rows = {1 / n_rows:.2g}")
        self.epsilon, self.steps = epsilon, steps
        import warnings

        with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is still valid
            warnings.simplefilter("ignore")
            self.sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=self.delta, sample_rate=self.q,
                                              steps=steps, accountant="rdp")
        self.acct = RDPAccountant()
        self.done = 0
        self.sampler = torch.Generator().manual_seed(seed)  # which rows: reproducible, like the non-DP order
        self.noise = torch.Generator(device=params[0].device).manual_seed(int.from_bytes(os.urandom(8), "little"))

    def draw(self) -> list[int]:
        """This step's Poisson sample of row indices (possibly empty)."""
        return torch.nonzero(torch.rand(self.n_rows, generator=self.sampler) < self.q).flatten().tolist()

    def step(self, per_row_loss: Any, rows: list[Any], opt: torch.optim.Optimizer) -> tuple[float, float]:
        """Clip each row's gradient to C, sum, add noise, step: (mean loss of the rows, share of rows clipped)."""
        acc = [torch.zeros_like(p) for p in self.params]
        losses, clipped = [], 0
        for row in rows:
            loss = per_row_loss(row)
            grads = [torch.zeros_like(p) if g is None else g  # a weight this row does not reach
                     for p, g in zip(self.params, torch.autograd.grad(loss, self.params, allow_unused=True),
                                     strict=True)]
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
            scale = torch.clamp(self.C / (norm + 1e-6), max=1.0)
            clipped += int(scale < 1)
            for a, g in zip(acc, grads, strict=True):
                a.add_(g * scale)
            losses.append(float(loss.detach()))
        for p, a in zip(self.params, acc, strict=True):
            noise = torch.normal(0.0, self.sigma * self.C, size=a.shape, generator=self.noise, device=a.device)
            p.grad = ((a + noise) / self.batch).to(p.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.acct.step(noise_multiplier=self.sigma, sample_rate=self.q)
        self.done += 1
        return (sum(losses) / len(losses) if losses else math.nan), clipped / max(1, len(rows))

    def resume(self, steps: int) -> None:
        """Back to where a resumed run stopped: the same draws skipped, the steps taken counted as spent."""
        for _ in range(steps):
            self.draw()
            self.acct.step(noise_multiplier=self.sigma, sample_rate=self.q)
        self.done = steps

    def spent(self) -> float:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.acct.get_epsilon(self.delta)) if self.done else 0.0

    def summary(self) -> dict[str, Any]:
        return {"epsilon_target": self.epsilon, "epsilon_spent": self.spent(), "delta": self.delta,
                "noise_multiplier": self.sigma, "max_grad_norm": self.C, "sample_rate": self.q,
                "expected_batch": self.batch, "rows": self.n_rows, "steps_planned": self.steps,
                "steps_done": self.done, "accountant": "rdp (opacus)", "privacy_unit": "one row"}
