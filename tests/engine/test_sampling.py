"""The sampler on synthetic logits: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from corral.engine.sampling import SamplingParams, apply_repetition_penalty, sample
from corral.errors import InvalidArgumentError

N = 20000  # rows for frequency checks: the std of a frequency is at most 0.0035


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows(probs: list[float], n: int = N) -> torch.Tensor:
    """(n, V) logits whose softmax is `probs`."""
    return torch.tensor(probs).log().expand(n, -1).contiguous()


def freqs(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(ids, minlength=vocab).float() / ids.numel()


def random_logits(b: int = 8, v: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, v, generator=gen(seed)) * 3


def test_greedy_is_argmax_whatever_the_filters():
    logits = random_logits()
    for p in [SamplingParams(), SamplingParams(temperature=0, top_k=5, top_p=0.5, min_p=0.3)]:
        out = sample(logits, p, gen())
        assert out.dtype == torch.int64 and out.shape == (8,)
        assert torch.equal(out, logits.argmax(-1))


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0, 100.0])
def test_top_k_1_is_argmax_at_any_temperature(temperature):
    logits = random_logits(b=64)
    for seed in range(5):
        out = sample(logits, SamplingParams(temperature=temperature, top_k=1), gen(seed))
        assert torch.equal(out, logits.argmax(-1))


def test_tiny_top_p_keeps_only_the_top_token():
    logits = random_logits(b=64)
    for seed in range(5):
        out = sample(logits, SamplingParams(temperature=10.0, top_p=1e-6), gen(seed))
        assert torch.equal(out, logits.argmax(-1))


def test_unfiltered_draws_follow_softmax():
    probs = [0.5, 0.25, 0.15, 0.07, 0.03]
    f = freqs(sample(rows(probs), SamplingParams(temperature=1.0), gen()), 5)
    assert torch.allclose(f, torch.tensor(probs), atol=0.02), f


def test_temperature_sharpens_and_flattens():
    probs = torch.tensor([0.6, 0.3, 0.1])
    for t in (0.5, 2.0):
        expected = probs ** (1 / t) / (probs ** (1 / t)).sum()
        f = freqs(sample(rows(probs.tolist()), SamplingParams(temperature=t), gen(1)), 3)
        assert torch.allclose(f, expected, atol=0.02), (t, f, expected)


def test_top_k_keeps_the_k_most_likely():
    f = freqs(sample(rows([0.1, 0.4, 0.2, 0.3]), SamplingParams(temperature=1.0, top_k=2), gen()), 4)
    assert f[0] == 0 and f[2] == 0
    assert math.isclose(f[1].item(), 4 / 7, abs_tol=0.02) and math.isclose(f[3].item(), 3 / 7, abs_tol=0.02)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # Sorted mass before each token: 0, 0.4, 0.7, 0.9 → with top_p 0.5 tokens 0 and 1 stay (renormalised 4:3).
    f = freqs(sample(rows([0.4, 0.3, 0.2, 0.1]), SamplingParams(temperature=1.0, top_p=0.5), gen()), 4)
    assert f[2] == 0 and f[3] == 0
    assert math.isclose(f[0].item(), 4 / 7, abs_tol=0.02)
    # top_p 0.75: the third token is needed to reach 0.75.
    f = freqs(sample(rows([0.4, 0.3, 0.2, 0.1]), SamplingParams(temperature=1.0, top_p=0.75), gen()), 4)
    assert f[3] == 0 and f[2] > 0.15


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    # min_p 0.2 of the top 0.5 = 0.1: the 0.05 token goes, the 0.15 one stays.
    f = freqs(sample(rows([0.5, 0.3, 0.15, 0.05]), SamplingParams(temperature=1.0, min_p=0.2), gen()), 4)
    assert f[3] == 0 and f[2] > 0.1
    assert math.isclose(f[0].item(), 0.5 / 0.95, abs_tol=0.02)


def test_masked_logits_are_never_drawn():
    logits = torch.zeros(N, 6)
    logits[:, [1, 4]] = float("-inf")
    f = freqs(sample(logits, SamplingParams(temperature=1.0), gen()), 6)
    assert f[1] == 0 and f[4] == 0 and f.min() == 0 and (f[[0, 2, 3, 5]] > 0.2).all()


def test_rows_are_sampled_independently():
    logits = torch.full((2, 4), -30.0)
    logits[0, 3] = logits[1, 0] = 30.0
    assert sample(logits, SamplingParams(temperature=1.0), gen()).tolist() == [3, 0]


def test_repetition_penalty_math():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0, 0.25]]  # seen: positive / 2, negative * 2; unseen untouched
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)
    # A penalty below 1 rewards repetition the same way round.
    assert apply_repetition_penalty(logits, seen, 0.5).tolist() == [[4.0, -1.0, 3.0, -1.0, 1.0]]


def test_repetition_penalty_changes_the_greedy_pick():
    logits = torch.tensor([[2.0, 1.5, -1.0]])
    seen = torch.tensor([[True, False, False]])
    p = SamplingParams(repetition_penalty=2.0)
    assert sample(logits, p, gen(), seen).item() == 1
    assert sample(logits, SamplingParams(), gen(), seen).item() == 0  # penalty 1: no effect


def test_same_seed_same_samples_different_seed_different():
    logits = torch.zeros(64, 1000)  # uniform: 64 draws from 1000 tokens
    p = SamplingParams(temperature=1.0)
    a, b = sample(logits, p, gen(123)), sample(logits, p, gen(123))
    c = sample(logits, p, gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # equal with probability 1e-192


def test_generator_state_advances():
    logits = torch.zeros(64, 1000)
    g = gen(5)
    p = SamplingParams(temperature=1.0)
    assert not torch.equal(sample(logits, p, g), sample(logits, p, g))


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1), dict(min_p=1.0),
    dict(repetition_penalty=0.0), dict(max_tokens=0),
])
def test_invalid_params(kwargs):
    with pytest.raises(InvalidArgumentError):
        SamplingParams(**kwargs)


def test_logit_bias_moves_greedy_and_sampled_picks():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert sample(logits, SamplingParams(logit_bias={3: 10.0})).item() == 3
    assert sample(logits, SamplingParams(logit_bias={0: -100.0})).item() == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample(logits, SamplingParams(temperature=1.0, logit_bias={2: 100.0}), g).item() for _ in range(20)}
    assert picks == {2}
    assert logits.tolist() == [[3.0, 2.0, 1.0, 0.0]]  # the caller's logits are not changed
