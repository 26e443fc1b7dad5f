"""Weight-only 4-bit linear layers: GGUF Q4_0/Q4_1 weights run as they are stored.

Phase one happens in the loader (GGUF blocks → codes + per-group scale/offset, `formats.gguf.Q4Tensor`); phase two
is the module swap here. PyTorch's int4 "tinygemm" kernels (`_weight_int4pack_mm_for_cpu` on CPU,
`_weight_int4pack_mm` on CUDA) compute w = (code - 8) * scale + zero per group of 32 input channels, which holds a
Q4_1 block exactly (scale = d, zero = m + 8d); only the fp16 → bf16 rounding of d and m is lost. Measured on this
2-core CPU (bench/decode_cpu.py): the whole decode step's matmuls fall from ~25 ms (fp32) to ~3 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def unpack_int4_cpu(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of `pack_int4_cpu` (n a multiple of 64): (N, K/2) uint8 → (N, K) codes."""
    p = packed.view(n // 64, k, 32)
    return torch.cat([p & 15, p >> 4], dim=2).transpose(1, 2).reshape(n, k)


def pack_vnni(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) codes and (N, K/32) per-block d, m (w = code * d + m) → the layout of csrc/int4_linear.cpp:
    packed (N/16, K/32, 4, 64) uint8 and scales (N/16, K/32, 2, 16) fp16 (GGUF's own d and m are fp16)."""
    n, k = codes.shape
    c = codes.to(torch.uint8).view(n // 16, 16, k // 32, 2, 4, 4)  # (tile, row, block, half, group, channel)
    c = c.permute(0, 2, 3, 4, 1, 5).reshape(n // 16, k // 32, 2, 4, 64)
    packed = (c[:, :, 0] | (c[:, :, 1] << 4)).contiguous()
    scales = torch.stack([t.half().view(n // 16, 16, k // 32).transpose(1, 2) for t in (d, m)], dim=2)
    return packed, scales.contiguous()


def pack_q8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) weights → int8 codes per block of 32 (scale max|w| / 127, as GGUF's Q8_0) in the layout of
    csrc/int4_linear.cpp's `int8_linear`: packed (N/16, K/32, 8, 64) int8, scales (N/16, K/32, 16) fp32 and the
    blocks' code sums (N/16, K/32, 16) int32."""
    n, k = w.shape
    if n > 4096:  # an LM head: in slices, so no fp32 copy of the whole matrix is ever made
        parts = [pack_q8(w[i:i + 4096]) for i in range(0, n, 4096)]
        return tuple(torch.cat(t) for t in zip(*parts, strict=True))
    g = w.detach().float().view(n, k // 32, 32)
    d = g.abs().amax(-1) / 127  # (N, K/32)
    q = (g / d.clamp_min(1e-30)[..., None]).round_().clamp_(-127, 127).to(torch.int8)  # an all-zero block: codes 0
    packed = q.view(n // 16, 16, k // 32, 8, 4).permute(0, 2, 3, 1, 4).reshape(n // 16, k // 32, 8, 64)
    wsum = q.sum(-1, dtype=torch.int32).view(n // 16, 16, k // 32).transpose(1, 2)
    return packed.contiguous(), d.view(n // 16, 16, k // 32).transpose(1, 2).contiguous(), wsum.contiguous()


def unpack_vnni(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of `pack_vnni`: (codes (N, K), d (N, K/32), m (N, K/32))."""
    nt, nb = packed.shape[:2]
    c = torch.stack([packed & 15, packed >> 4], dim=2).view(nt, nb, 2, 4, 16, 4)
    codes = c.permute(0, 4, 1, 2, 3, 5).reshape(nt * 16, nb * 32)
    d, m = (scales[:, :, i].transpose(1, 2).reshape(nt * 16, nb).float() for i in (0, 1))
    return codes, d, m


class Int4Linear(nn.Module):
    """y = x @ W.T (+ bias) with W held as packed 4-bit codes; activations in bf16."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bias: torch.Tensor | None,
                 device: torch.device):
        super().__init__()
        n, k = codes.shape
        self.in_features, self.out_features = k, n
        # GGUF's fp16 d and m as they are, for corral's CPU kernel (`use_vnni`), which reads them in fp16; tinygemm
        # below takes bf16 scale and zero, a rounding of both.
        self.q4_dm = (scale.half(), offset.half()) if device.type == "cpu" else None
        zero = offset + 8.0 * scale  # (N, K/32)
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K/32, N, 2)
        self.register_buffer("scales_and_zeros", sz.to(device, torch.bfloat16))
        if device.type == "cpu":
            packed = pack_int4_cpu(codes)
        else:
            c = codes.to(device, torch.int32)
            # tinygemm wants K to be a multiple of 16 x inner k-tiles: 8 tiles where K allows (SmolLM2's 576
            # does not), else 4 or 2.
            tiles = next(t for t in (8, 4, 2) if k % (16 * t) == 0)
            packed = torch._convert_weight_to_int4pack((c[:, ::2] << 4 | c[:, 1::2]).to(torch.uint8), tiles)
        self.register_buffer("packed", packed.to(device))
        # Chosen once: the decode step calls this 120 times, and per-call Python work shows at that rate.
        self._mm = torch._weight_int4pack_mm_for_cpu if device.type == "cpu" else torch._weight_int4pack_mm
        self.bias = None if bias is None else nn.Parameter(bias.to(device, torch.bfloat16), requires_grad=False)

    @classmethod
    def from_vnni(cls, packed: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Linear:
        """A layer already in corral's CPU kernel layout (`use_vnni`'s output, read back from the packed cache)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = packed.shape[0] * 16, packed.shape[1] * GROUP
        layer.register_buffer("scales_and_zeros", None)
        layer.register_buffer("packed", None)
        layer.vnni_packed, layer.vnni_scales, layer.q4_dm = packed, scales, None
        layer._mm = torch._weight_int4pack_mm_for_cpu
        layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return layer

    def use_vnni(self) -> bool:
        """Compute with corral's int8 x int4 CPU kernel from now on (csrc/int4_linear.cpp, AVX-512 VNNI): the
        activations are quantized to int8 per block of 32, as llama.cpp does, and each block's dot product is one
        integer multiply-add. The same weights; the PyTorch pack is dropped. False where the shapes do not allow it."""
        n, k = self.out_features, self.in_features
        if self.packed is None or self.packed.device.type != "cpu" or n % 64 or k % GROUP:
            return self.packed is None
        codes = unpack_int4_cpu(self.packed, n, k)
        if self.q4_dm is not None:
            d, m = self.q4_dm
        else:
            sz = self.scales_and_zeros.float()  # (K/32, N, 2): w = (code - 8) * scale + zero
            d = sz[..., 0].T.contiguous()
            m = sz[..., 1].T - 8 * d
        self.vnni_packed, self.vnni_scales = pack_vnni(codes, d, m)
        self.packed = self.scales_and_zeros = self.q4_dm = None
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.packed is None:
            y = torch.ops.corral.int4_linear(x.float(), self.vnni_packed, self.vnni_scales)
            return (y if self.bias is None else y + self.bias).to(x.dtype)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = self._mm(x2, self.packed, GROUP, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (N, K) this layer computes with (for export and tests)."""
        if self.packed is None:
            codes, d, m = unpack_vnni(self.vnni_packed, self.vnni_scales)
        elif self.packed.device.type == "cpu" and self.out_features % 64 == 0:
            codes = unpack_int4_cpu(self.packed, self.out_features, self.in_features)
            sz = self.scales_and_zeros.float()
            d = sz[..., 0].T
            m = sz[..., 1].T - 8 * d
        else:
            return self._dequantize_by_identity()
        return codes.float() * d.repeat_interleave(GROUP, 1) + m.repeat_interleave(GROUP, 1)

    def _dequantize_by_identity(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.packed.device)
        b = self.bias
        self.bias = None
        try:
            return self.forward(eye).float().T.contiguous()
        finally:
            self.bias = b


def quantize_q4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) weights → 4-bit codes (N, K) uint8, fp16 scale and offset (N, K/32): w ≈ code * scale + offset per
    group of 32 (min/max, as GGUF's Q4_1). A Q4_1 GGUF's dequantized weights come back bit-exact: each block's
    min and max are its own offset and offset + 15 * scale, already fp16."""
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"in_features {k} is not a multiple of {GROUP}")
    g = w.detach().float().view(n, k // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).half()
    offset = lo.half()
    s = scale.float().clamp_min(torch.finfo(torch.float16).tiny)[..., None]
    codes = ((g - offset.float()[..., None]) / s).round_().clamp_(0, 15).to(torch.uint8)
    return codes.view(n, k), scale, offset


class _Q4Matmul(torch.autograd.Function):
    """x @ W.T with W dequantized from 4 bits in the forward and again in the backward: the full-precision weight
    lives only for the duration of one matmul, so a frozen 4-bit base stays 4-bit through the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Q4TrainLinear") -> torch.Tensor:  # noqa: UP037
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        ctx.layer, ctx.dt, ctx.x_dtype = layer, dt, x.dtype
        return F.linear(x.to(dt), layer.dequantize(dt))

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        w = ctx.layer.dequantize(ctx.dt)
        return (gy.to(ctx.dt) @ w).to(ctx.x_dtype), None


class Q4TrainLinear(nn.Module):
    """A frozen 4-bit linear layer for QLoRA-style training: codes packed two to a byte, fp16 scale and offset
    per 32 weights (4.5 bits a weight against 32 for fp32), dequantized per matmul. Gradients flow to the input,
    never to the weights; LoRA wraps it like any Linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        codes, scale, offset = quantize_q4(linear.weight)
        self.register_buffer("packed", codes[:, 0::2] | (codes[:, 1::2] << 4))  # (N, K/2) uint8
        self.register_buffer("scale", scale)  # (N, K/32) fp16
        self.register_buffer("offset", offset)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        codes = torch.stack((self.packed & 15, self.packed >> 4), dim=-1).view(n, k // GROUP, GROUP)
        w = codes.to(dtype) * self.scale.to(dtype)[..., None] + self.offset.to(dtype)[..., None]
        return w.view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Q4Matmul.apply(x, self)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def quantize_for_training(model: nn.Module, targets: tuple[str, ...] | list[str]) -> int:
    """Swap every `nn.Linear` named in `targets` (q_proj, ...) for a frozen `Q4TrainLinear`. Returns the count."""
    n = 0
    for name, mod in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        if child in targets and isinstance(mod, nn.Linear) and mod.in_features % GROUP == 0:
            setattr(model.get_submodule(parent), child, Q4TrainLinear(mod))
            n += 1
    return n


def tensor_bytes(model: nn.Module, trainable: bool | None = None) -> int:
    """Bytes of the model's parameters and buffers (each shared tensor once); `trainable` picks one side."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or (trainable is not None and t.requires_grad != trainable):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total
