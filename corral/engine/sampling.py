"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, min-p, repetition penalty, seed.

Everything stays on the device: the draw uses the exponential-race trick (argmax of p / Exp(1) noise), which
needs no host sync, unlike `torch.multinomial` on some backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from corral.errors import InvalidArgumentError


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id → added to its logit (OpenAI's)

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidArgumentError(msg)
        if self.temperature < 1e-5:  # logits / t would overflow fp32; a near-zero temperature means greedy
            self.temperature = 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF/CTRL rule on (B, V) logits: seen tokens' positive logits divided by `penalty`, negative ones multiplied.

    `seen` is a (B, V) bool mask kept up to date on the device by the caller.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None = None,
           seen: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) fp32 logits → (B,) token ids, on the logits' device."""
    if p.temperature == 0:
        return _adjust(logits, p, seen).argmax(dim=-1)
    return draw(sampling_weights(logits, p, seen), generator)


def _adjust(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None) -> torch.Tensor:
    """Logit bias, then repetition penalty: the transforms greedy decoding applies too."""
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), device=logits.device)
        logits = logits.index_add(-1, ids, torch.tensor(list(p.logit_bias.values()), device=logits.device,
                                                         dtype=logits.dtype).expand(logits.shape[0], -1))
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
    return logits


def sampling_weights(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits → (B, V) non-negative weights proportional to the distribution `sample` draws from when
    temperature > 0 (bias, penalty, temperature, top-k, top-p, min-p applied; not renormalised after the cuts).
    Speculative decoding needs these probabilities, not just a draw."""
    logits = _adjust(logits, p, seen) / p.temperature
    if p.top_k:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= p.top_p
        drop_sorted[..., 0] = False  # even when top_p is below fp32's smallest step
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    if p.min_p > 0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs


def draw(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) non-negative weights → (B,) ids drawn in proportion to them (exponential race, no host sync)."""
    noise = torch.empty_like(weights).exponential_(generator=generator)
    return (weights / noise).argmax(dim=-1)
