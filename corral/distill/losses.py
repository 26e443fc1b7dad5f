"""Knowledge-distillation losses: forward KL, reverse KL and generalised JSD(beta), with a temperature, over the
full vocabulary (online teacher) or over a teacher's cached top-k.

Notation: P is the teacher's next-token distribution, Q the student's, both softened by the temperature T.

- forward KL(P || Q): mass-covering; the classic Hinton et al. (2015) loss, what most distillation uses;
- reverse KL(Q || P): mode-seeking; the student concentrates on the teacher's main modes (MiniLLM, GKD);
- JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q (GKD, Agarwal et al. 2024): as
  beta → 0 it behaves like forward KL and as beta → 1 like reverse KL (both scaled by the small beta / 1 - beta);
  beta = 0.5 is the symmetric Jensen-Shannon divergence, bounded by log 2.

Each is multiplied by T² so that its gradients keep their size as T changes (Hinton et al.).

A cached teacher keeps only its k most likely tokens per position (`TopK`: their log-probabilities under P at
temperature 1, and their ids). The divergence is then taken between the two distributions coarsened to k + 1
outcomes — the k tokens and "any other token" — which is exact for that partition: what the teacher put outside
its top k still counts, as one bucket, and the student is charged for the mass it puts there. With k = 64 and a
peaked teacher this is within a few percent of the full-vocabulary loss (tests/test_distill.py measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("fkl", "rkl", "jsd")


@dataclass
class TopK:
    """A teacher's top-k at N positions: log-probabilities at temperature 1 (N, k) and token ids (N, k)."""

    logprobs: torch.Tensor
    ids: torch.Tensor


def kd_loss(student_logits: torch.Tensor, teacher: torch.Tensor | TopK, kind: str = "fkl", temperature: float = 1.0,
            beta: float = 0.5) -> torch.Tensor:
    """Summed divergence over N positions: student_logits (N, V); teacher: logits (N, V) or a `TopK`."""
    if kind not in KINDS:
        raise ValueError(f"unknown KD loss {kind!r}; choose one of {', '.join(KINDS)}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    if isinstance(teacher, TopK):
        t = teacher.logprobs.float()
        if temperature != 1.0:  # softened over the k + 1 outcomes, "the rest" as one (P's tail is not stored)
            rest = _log1mexp(torch.logsumexp(t, dim=-1, keepdim=True))
            t = torch.cat([t, rest], dim=-1) / temperature
            t = F.log_softmax(t, dim=-1)[..., :-1]
        s_top = s.gather(-1, teacher.ids.long())  # (N, k)
        p_log = _with_rest(t)  # (N, k + 1)
        q_log = _with_rest(s_top)
    else:
        p_log = F.log_softmax(teacher.float() / temperature, dim=-1)
        q_log = s
    return divergence(p_log, q_log, kind, beta).sum() * temperature**2


def divergence(p_log: torch.Tensor, q_log: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence (N,) between log-distributions over the last dimension."""
    if kind == "fkl":
        return _kl(p_log, q_log)
    if kind == "rkl":
        return _kl(q_log, p_log)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"JSD beta must be in (0, 1), got {beta}; beta -> 0 / 1 approach forward / reverse KL")
    m_log = torch.logsumexp(torch.stack([p_log + math.log(beta), q_log + math.log(1 - beta)]), dim=0)
    return beta * _kl(p_log, m_log) + (1 - beta) * _kl(q_log, m_log)


def distill_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | TopK, alpha: float,
                 kind: str = "fkl", temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """(1 - alpha) · CE(student, labels) + alpha · KD(teacher, student), summed over positions."""
    ce = F.cross_entropy(student_logits.float(), targets, reduction="sum")
    if alpha == 0.0:
        return ce
    return (1 - alpha) * ce + alpha * kd_loss(student_logits, teacher, kind, temperature, beta)


def _kl(a_log: torch.Tensor, b_log: torch.Tensor) -> torch.Tensor:
    """KL(A || B) per row; 0 · log 0 = 0 (a clamped -inf keeps the product, and its gradient, finite)."""
    a_log = a_log.clamp(min=-1e4)
    return (a_log.exp() * (a_log - b_log.clamp(min=-1e4))).sum(-1)


def _with_rest(top_log: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probs of k outcomes → (N, k + 1) with log(1 - their sum) for every other token."""
    return torch.cat([top_log, _log1mexp(torch.logsumexp(top_log, dim=-1, keepdim=True))], dim=-1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends; -inf clamped to a tiny mass so the KL stays finite."""
    x = x.clamp(max=-1e-7)
    out = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp(min=-80.0)
