"""corral's CPU decode-attention kernel (corral/model/csrc/decode_attention.cpp) against plain softmax attention."""

from __future__ import annotations

import logging

import pytest
import torch

from corral.model import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="corral's CPU kernels did not build here "
                                "(no C++ compiler?); the engine falls back to matmul attention")


def reference(q, kc, vc, lengths, slots=None):
    """Softmax attention of each (row, head, token) over its own first `lengths` keys, in float64."""
    B, H, T, D = q.shape
    R = H // kc.shape[1]
    out = torch.empty(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        s = b if slots is None else int(slots[b])
        for h in range(H):
            for t in range(T):
                n = int(lengths[b, t])
                k, v = kc[s, h // R, :n].double(), vc[s, h // R, :n].double()
                out[b, h, t] = (q[b, h, t].double() @ k.T * D**-0.5).softmax(-1) @ v
    return out


def run(q, kc, vc, lengths, slots=None):
    return torch.ops.corral.decode_attention(q, kc, vc, lengths, slots, q.shape[-1] ** -0.5)


# head_dim 64 and 128 with n_rep up to 8 take the AVX-512 path where the CPU has it; 32 and n_rep 16 the portable one
@pytest.mark.parametrize("D,H,n_kv", [(64, 9, 3), (128, 8, 2), (64, 4, 4), (32, 6, 2), (64, 16, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_softmax_attention(D, H, n_kv, dtype):
    g = torch.Generator().manual_seed(0)
    B, T, L = 5, 1, 300
    kc = torch.randn(7, n_kv, L, D, generator=g).to(dtype)
    vc = torch.randn(7, n_kv, L, D, generator=g).to(dtype)
    q = torch.randn(B, H, T, D, generator=g) * 2
    lengths = torch.tensor([[1], [15], [16], [17], [300]])  # one key, around one vector of keys, the whole cache
    out = run(q, kc, vc, lengths)
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(q, kc, vc, lengths), atol=2e-6, rtol=2e-5)


def test_a_row_gets_the_same_bits_alone_as_in_any_batch():
    """What the engine's batch invariance rests on: no reduction depends on the other rows or the batch size."""
    g = torch.Generator().manual_seed(1)
    kc, vc = torch.randn(16, 3, 256, 64, generator=g), torch.randn(16, 3, 256, 64, generator=g)
    q = torch.randn(16, 9, 1, 64, generator=g)
    lengths = torch.randint(1, 257, (16, 1), generator=g)
    batch = run(q, kc, vc, lengths)
    for b in (0, 7, 15):
        alone = run(q[b:b + 1], kc, vc, lengths[b:b + 1], torch.tensor([b]))
        assert torch.equal(alone, batch[b:b + 1])


def test_several_new_tokens_each_equal_a_one_token_decode_and_slots_pick_cache_rows():
    """A speculative verify: token t attends to its own prefix, bit for bit what a one-token decode computes."""
    g = torch.Generator().manual_seed(2)
    kc, vc = torch.randn(6, 2, 128, 64, generator=g), torch.randn(6, 2, 128, 64, generator=g)
    q = torch.randn(2, 8, 5, 64, generator=g)
    lengths = torch.tensor([[40, 41, 42, 43, 44], [3, 4, 5, 6, 7]])
    slots = torch.tensor([4, 1])
    out = run(q, kc, vc, lengths, slots)
    torch.testing.assert_close(out.double(), reference(q, kc, vc, lengths, slots), atol=2e-6, rtol=2e-5)
    for t in range(5):
        one = run(q[:, :, t:t + 1].contiguous(), kc, vc, lengths[:, t:t + 1].contiguous(), slots)
        assert torch.equal(one, out[:, :, t:t + 1])


def test_bad_arguments_are_refused():
    kc = torch.zeros(2, 1, 8, 64)
    with pytest.raises(RuntimeError, match="float32"):
        run(torch.zeros(1, 2, 1, 64, dtype=torch.float64), kc, kc, torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="lengths"):
        run(torch.zeros(1, 2, 1, 64), kc, kc, torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="slots"):
        run(torch.zeros(3, 2, 1, 64), kc, kc, torch.ones(3, 1, dtype=torch.long))


def test_compiles_inside_a_torch_compile_graph():
    """The engine's `--compile` decode step traces through the op (its fake implementation gives the shape)."""
    g = torch.Generator().manual_seed(3)
    kc, vc = torch.randn(4, 3, 64, 64, generator=g), torch.randn(4, 3, 64, 64, generator=g)
    q = torch.randn(4, 9, 1, 64, generator=g)
    lengths = torch.tensor([[5], [64], [1], [30]])

    def f(q, lengths):
        return run(q * 2, kc, vc, lengths) + 1

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(q, lengths), f(q, lengths))


def test_without_a_compiler_corral_says_so_and_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING):
        assert kernels._build() is False
    assert "no C++ compiler" in caplog.text
