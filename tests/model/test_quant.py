"""The packed 4-bit path: our packer matches PyTorch's, and Int4Linear computes the dequantized weight's matmul."""

from __future__ import annotations

import torch

from corral.model.quant import Int4Linear, pack_int4_cpu


def test_pack_matches_pytorch_packer():
    g = torch.Generator().manual_seed(0)
    for n, k in [(64, 32), (192, 576), (1536, 64), (96, 64)]:
        codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
        ref = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
        assert torch.equal(pack_int4_cpu(codes.to(torch.uint8)), ref), (n, k)


def test_int4_linear_equals_dequantized_matmul():
    g = torch.Generator().manual_seed(1)
    n, k = 128, 96
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = torch.rand(n, k // 32, generator=g) * 0.1
    offset = -8 * scale + torch.randn(n, k // 32, generator=g) * 0.01
    # Reference with scales rounded to bf16 as the kernel stores them.
    w = codes.float().view(n, k // 32, 32) * scale.bfloat16().float()[..., None] + (
        (offset + 8 * scale).bfloat16().float() - 8 * scale.bfloat16().float())[..., None]
    lin = Int4Linear(codes, scale, offset, None, torch.device("cpu"))
    x = torch.randn(3, k, generator=g)
    y = lin(x)
    ref = x.bfloat16().float() @ w.view(n, k).T
    assert y.shape == (3, n)
    assert torch.allclose(y.float(), ref, atol=0.05, rtol=0.02), (y.float() - ref).abs().max()
    assert torch.allclose(lin.dequantize(), w.view(n, k), atol=0.01)


def test_q4_train_linear_requantizes_exactly_and_passes_gradients_to_its_input():
    from corral.model.quant import Q4TrainLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Q4TrainLinear(lin)
    w = q.dequantize()
    assert (w - lin.weight).abs().max() <= lin.weight.abs().max() / 8  # 4-bit steps of (max - min) / 15
    again = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        again.weight.copy_(w)
    assert torch.equal(Q4TrainLinear(again).dequantize(), w)  # a Q4_1 grid comes back bit-exact
    x = torch.randn(3, 64, requires_grad=True)
    q(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, w, lin.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert not any(p.requires_grad for p in q.parameters())
