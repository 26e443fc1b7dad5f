"""Weight-only 4-bit linear layers: GGUF Q4_0/Q4_1 weights run as they are stored.

Phase one happens in the loader (GGUF blocks → codes + per-group scale/offset, `formats.gguf.Q4Tensor`); phase two
is the module swap here. PyTorch's int4 "tinygemm" kernels (`_weight_int4pack_mm_for_cpu` on CPU,
`_weight_int4pack_mm` on CUDA) compute w = (code - 8) * scale + zero per group of 32 input channels, which holds a
Q4_1 block exactly (scale = d, zero = m + 8d); only the fp16 → bf16 rounding of d and m is lost. Measured on this
2-core CPU (bench/decode_cpu.py): the whole decode step's matmuls fall from ~25 ms (fp32) to ~3 ms.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32


def int4_supported(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


def pack_int4_cpu(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in [0, 15] → the (N, K/2) uint8 layout of `_weight_int4pack_mm_for_cpu`.

    Blocks of 64 output rows; within a block, for each input channel k, 32 bytes whose byte j holds row j in its
    low nibble and row j + 32 in its high one. Done here with a few vectorised ops because
    `_convert_weight_to_int4pack_for_cpu` wants int32 input: the widening copy plus its loop took ~4 s for the
    default model, a few tenths here. tests/test_quant.py checks this against PyTorch's own packer.
    """
    n, k = codes.shape
    if n % 64:
        return torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    c = codes.to(torch.uint8).view(n // 64, 2, 32, k)
    return (c[:, 0] | (c[:, 1] << 4)).transpose(1, 2).contiguous().view(n, k // 2)


class Int4Linear(nn.Module):
    """y = x @ W.T (+ bias) with W held as packed 4-bit codes; activations in bf16."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bias: torch.Tensor | None,
                 device: torch.device):
        super().__init__()
        n, k = codes.shape
        self.in_features, self.out_features = k, n
        zero = offset + 8.0 * scale  # (N, K/32)
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K/32, N, 2)
        self.register_buffer("scales_and_zeros", sz.to(device, torch.bfloat16))
        if device.type == "cpu":
            packed = pack_int4_cpu(codes)
        else:
            c = codes.to(device, torch.int32)
            packed = torch._convert_weight_to_int4pack((c[:, ::2] << 4 | c[:, 1::2]).to(torch.uint8), 8)
        self.register_buffer("packed", packed.to(device))
        # Chosen once: the decode step calls this 120 times, and per-call Python work shows at that rate.
        self._mm = torch._weight_int4pack_mm_for_cpu if device.type == "cpu" else torch._weight_int4pack_mm
        self.bias = None if bias is None else nn.Parameter(bias.to(device, torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = self._mm(x2, self.packed, GROUP, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (N, K) this layer computes with (for export and tests)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.packed.device)
        b = self.bias
        self.bias = None
        try:
            return self.forward(eye).float().T.contiguous()
        finally:
            self.bias = b
