"""One Llama-family decoder: Llama 2, Llama 3/3.1/3.2 and SmolLM2-class checkpoints.

Architecture choices (all of them follow HF's `LlamaForCausalLM`, so converting a checkpoint is a rename):
- pre-norm RMSNorm blocks; SwiGLU MLP (`down(silu(gate(x)) * up(x))`);
- grouped-query attention: `num_key_value_heads` divides `num_attention_heads`;
- RoPE in the "rotate half" layout (GGUF's interleaved Q/K rows are un-permuted by the loader), with the
  Llama 3.1 `llama3` and `linear` frequency scalings; the angles are computed from each token's own position,
  so every sequence of a batch may sit at a different position (what the batched engine needs);
- tied or untied input/output embeddings; fp32 / bf16 / fp16 weights, RMSNorm and softmax in fp32.

The KV cache is a static buffer allocated once (`KVCache`); a forward pass writes its new keys/values at the
given positions and attends over the first `kv_len` cache entries, masked per sequence by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from corral.config import ModelConfig

# Up to this many new tokens per sequence (decode), attention on CPU can run as blocked batched matmuls
# (`Attention._attend_blocked`): it gives each sequence the same bits whatever else is in the batch (the engine
# asks for that), and in bf16 it beats PyTorch's CPU flash kernel, which is 2-10x slower there. On CUDA, SDPA.
SMALL_T = 8
RESCORE_K = 32  # logits per row recomputed exactly beside the bf16 batch head (`LlamaForCausalLM.head`)
KV_BLOCK = 64  # keys per block of the blocked decode attention; cache lengths are rounded up to a multiple


def rope_inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with the config's rope scaling applied, in fp32."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type"))
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor = float(sc["factor"])
        low, high = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
        old_ctx = float(sc.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); cos: (B, 1, T, hd); sin: (B, 1, T, hd) with its first half negated.

    Rotate-half layout, as HF: x * cos + cat(-x2, x1) * sin, where roll() gives cat(x2, x1) in one op.
    """
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin


class Swappable(nn.Module):
    """A module that counts, across all models, the submodules and parameters set on it after it was built (LoRA,
    quantization, a loaded state dict): a decode plan made from the old ones checks its modules only after a swap."""

    swaps = 0

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, nn.Module | nn.Parameter):
            Swappable.swaps += 1
        super().__setattr__(name, value)


class RMSNorm(Swappable):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Half precision: normalise in fp32, as HF does, then scale in the model dtype.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


Q8 = torch.int8  # a cache "dtype" of int8 means q8_0 rows (`kv_pack`)


def kv_pack(x: torch.Tensor) -> torch.Tensor:
    """Key or value rows (..., hd) as q8_0 rows (..., hd + hd/16) int8: hd int8 values, then one fp16 scale per
    block of 32 as bytes (GGUF's Q8_0; the same bytes corral's C++ kernels write, csrc/corral_kernels.h)."""
    xb = x.float().unflatten(-1, (-1, 32))
    d = (xb.abs().amax(-1, keepdim=True) / 127).half()
    df = d.float()
    inv = torch.where(df > 0, 1.0 / df, torch.zeros_like(df))
    q = (xb * inv).round().clamp(-127, 127).to(torch.int8).flatten(-2)
    return torch.cat((q, d.squeeze(-1).view(torch.int8)), dim=-1)


def kv_unpack(rows: torch.Tensor, hd: int, dtype: torch.dtype) -> torch.Tensor:
    """q8_0 rows (..., hd + hd/16) back to (..., hd) numbers in `dtype`."""
    q = rows[..., :hd].float().unflatten(-1, (-1, 32))
    d = rows[..., hd:].contiguous().view(torch.float16).float()
    return (q * d[..., None]).flatten(-2).to(dtype)


@dataclass
class KVCache:
    """Static key/value buffers: one (B, n_kv, max_len, hd) pair per layer, allocated once.

    Slot b of the batch dimension is one sequence. Entries past a sequence's position are never attended
    (the mask is by position), so reusing a slot for a new sequence needs no clearing. A cache of dtype `Q8`
    (int8) holds q8_0 rows instead, hd + hd/16 bytes wide (`kv_pack`): about half of fp16.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(
        cls, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str
    ) -> KVCache:
        return cls._zeros(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim, dtype, device)

    def allocate_like(self, batch: int, max_len: int) -> KVCache:
        """Buffers of `batch` x `max_len` positions with this cache's layers, heads, head dim, dtype and device."""
        return self._zeros(len(self.k), batch, self.k[0].shape[1], max_len, self.head_dim, self.k[0].dtype,
                           self.k[0].device)

    @classmethod
    def _zeros(cls, layers: int, batch: int, n_kv: int, max_len: int, hd: int, dtype: torch.dtype,
               device: torch.device | str) -> KVCache:
        if dtype == Q8 and hd % 32:
            raise ValueError(f"a q8_0 KV cache needs a head dim that is a multiple of 32, not {hd}; "
                             "pick --kv-dtype float16")
        shape = (batch, n_kv, -(-max_len // KV_BLOCK) * KV_BLOCK, hd + hd // 16 if dtype == Q8 else hd)
        # zeros, not empty: garbage NaNs in never-written slots would leak through 0 * NaN in P @ V.
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        return cls(k, v)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def head_dim(self) -> int:
        w = self.k[0].shape[3]
        return w * 16 // 17 if self.k[0].dtype == Q8 else w

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def bytes_per_token(self) -> int:
        """Bytes one position of one slot takes, every layer's keys and values."""
        return sum(t.shape[1] * t.shape[3] * t.element_size() for t in self.k + self.v)


@dataclass
class Batch:
    """What one forward pass needs besides the token ids; built once per step and shared by all layers."""

    positions: torch.Tensor  # (B, T) absolute position of each token
    cos: torch.Tensor  # (B, 1, T, hd)
    sin: torch.Tensor  # (B, 1, T, hd), first half negated (see apply_rope)
    mask: torch.Tensor  # (B, 1, T, S) bool, True = may attend
    slots: torch.Tensor | None  # (B,) cache slot of each row, None = rows 0..B-1
    kv_len: int  # attend over cache[..., :kv_len, :]
    write_rows: torch.Tensor | None = None  # (B*n_kv*T,) rows of the cache viewed as (slots*n_kv*max_len, hd)
    bias: torch.Tensor | None = None  # (B*n_kv, n_rep*T, S) fp32 additive mask, blocked path
    lengths: torch.Tensor | None = None  # (B, T) int64 keys each token attends to, decode-attention kernel path
    causal: bool = False  # no cache, positions 0..T-1 in every row: `mask` is the plain causal one


class Attention(Swappable):
    """Grouped-query self-attention. The projections are passed in, so LoRA or quantization is a module swap."""

    def __init__(self, cfg: ModelConfig, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module, o_proj: nn.Module):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.qkv_proj: nn.Module | None = None  # set by `fuse_qkv` for inference: one matmul instead of three
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def fuse_qkv(self, qkv_proj: nn.Module) -> None:
        """Replace q/k/v by one projection whose output rows are [q; k; v] (inference only)."""
        del self.q_proj, self.k_proj, self.v_proj
        self.qkv_proj = qkv_proj

    def forward(self, x: torch.Tensor, b: Batch, cache_k: torch.Tensor | None, cache_v: torch.Tensor | None):
        B, T, _ = x.shape
        H, n_kv, hd = self.n_heads, self.n_kv, self.hd
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x).view(B, T, H + 2 * n_kv, hd).transpose(1, 2)  # (B, H + 2 n_kv, T, hd)
            qk = apply_rope(qkv[:, : H + n_kv], b.cos, b.sin)  # q and k rotated in one go
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + n_kv:]
        else:
            q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
            k = self.k_proj(x).view(B, T, n_kv, hd).transpose(1, 2)  # (B, n_kv, T, hd)
            v = self.v_proj(x).view(B, T, n_kv, hd).transpose(1, 2)
            q, k = apply_rope(q, b.cos, b.sin), apply_rope(k, b.cos, b.sin)
        if cache_k is not None:
            # The cache may be kept in a narrower dtype than the activations (the engine's `kv_dtype`).
            # index_copy_ into the flattened cache: ~7 us a call where index_put_ took ~25-100 us, 60 calls a step.
            q8 = cache_k.dtype == Q8
            k_rows, v_rows = k.reshape(-1, hd), v.reshape(-1, hd)
            if q8:
                k_rows, v_rows = kv_pack(k_rows), kv_pack(v_rows)
            rows = (-1, cache_k.shape[-1])
            cache_k.view(rows).index_copy_(0, b.write_rows, k_rows.to(cache_k.dtype))
            cache_v.view(rows).index_copy_(0, b.write_rows, v_rows.to(cache_v.dtype))
            if b.lengths is not None:  # the CPU kernel reads each sequence's own keys straight from the cache
                y = torch.ops.corral.decode_attention(q.float(), cache_k, cache_v, b.lengths, b.slots, hd**-0.5)
                return self.o_proj(y.to(q.dtype).transpose(1, 2).reshape(B, T, H * hd))
            if b.slots is None:
                k, v = cache_k[:B, :, : b.kv_len], cache_v[:B, :, : b.kv_len]  # views, no copy
            else:
                k, v = cache_k[b.slots, :, : b.kv_len], cache_v[b.slots, :, : b.kv_len]
            if q8:  # dequantized whole for SDPA: correct on any device, but no memory saved while attending
                k, v = kv_unpack(k, hd, q.dtype), kv_unpack(v, hd, q.dtype)
            k, v = k.to(q.dtype), v.to(q.dtype)  # no-ops unless the cache is narrower
        if b.bias is not None:
            y = self._attend_blocked(q, k, v, b.bias)
        else:
            # A plain causal pass (training, scoring) says so: the kernels then skip the masked half of the blocks.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if b.causal else b.mask, is_causal=b.causal,
                                               enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))

    def _attend_blocked(self, q, k, v, bias):
        """Decode attention as two batched matmuls over the cache's own memory, batch-invariant: a sequence gets
        the same bits alone or beside longer ones (whose length pads its keys with masked entries).

        Measured on this CPU's kernels (bench notes in the engine's docstring): a batched matmul gives each
        matrix the same bits whatever the batch count, and a zero-padded reduction dimension adds exact zeros,
        so scores = q @ K^T and P @ V over the padded length equal those over the sequence's own. The only
        other reduction, the softmax denominator, is summed per KV_BLOCK keys and the blocks combined by a
        sequential cumsum (a plain sum regroups with the length). K and V are views of the cache: no copies.
        """
        B, H, T, hd = q.shape
        if T > 1:
            # One token at a time, each exactly as a one-token decode computes it: a speculative verify of k + 1
            # tokens then gives each position the bits plain decoding would (a bmm with more rows takes another
            # kernel path; on the 4-bit model that moved logits by up to 0.6 and flipped greedy near-ties).
            n_rep = H // self.n_kv
            b = bias.view(B * self.n_kv, n_rep, T, -1)
            return torch.cat([self._attend_blocked(q[:, :, t:t + 1], k, v,
                                                   b[:, :, t].reshape(B * self.n_kv, n_rep, -1))
                              for t in range(T)], dim=2)
        S = k.shape[2]
        BK, R = B * self.n_kv, (H // self.n_kv) * T
        qg = q.reshape(BK, R, hd)  # query heads sharing a KV head stacked as rows, ordered (rep, t)
        kf, vf = k.reshape(BK, S, hd), v.reshape(BK, S, hd)  # views: slots and heads merge, S keeps its stride
        scores = torch.bmm(qg, kf.transpose(1, 2)).float() * self.hd**-0.5 + bias  # (BK, R, S)
        p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        denom = p.view(BK, R, S // KV_BLOCK, KV_BLOCK).sum(-1).cumsum(-1)[..., -1:]  # (BK, R, 1)
        out = torch.bmm(p.to(v.dtype), vf).float()  # (BK, R, hd)
        return (out / denom).to(q.dtype).view(B, H, T, hd)


class MLP(Swappable):
    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.gate_up_proj: nn.Module | None = None  # set by `fuse_gate_up` for inference

    def fuse_gate_up(self, gate_up_proj: nn.Module) -> None:
        """Replace gate/up by one projection whose output rows are [gate; up] (inference only)."""
        del self.gate_proj, self.up_proj
        self.gate_up_proj = gate_up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(Swappable):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        ab, mb = cfg.attention_bias, cfg.mlp_bias
        self.self_attn = Attention(
            cfg,
            nn.Linear(h, cfg.num_attention_heads * hd, bias=ab),
            nn.Linear(h, cfg.num_key_value_heads * hd, bias=ab),
            nn.Linear(h, cfg.num_key_value_heads * hd, bias=ab),
            nn.Linear(cfg.num_attention_heads * hd, h, bias=ab),
        )
        self.mlp = MLP(
            nn.Linear(h, cfg.intermediate_size, bias=mb),
            nn.Linear(h, cfg.intermediate_size, bias=mb),
            nn.Linear(cfg.intermediate_size, h, bias=mb),
        )
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, x, b: Batch, cache_k=None, cache_v=None):
        x = x + self.self_attn(self.input_layernorm(x), b, cache_k, cache_v)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # _weight given: skips the random init, which on the meta device runs a slow Python reference (~1 s)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The decoder plus LM head. State-dict keys equal HF's (`model.layers.0.self_attn.q_proj.weight`, ...)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # on the CPU even inside a meta-device build: arange on meta goes through torch._refs, ~1 s of imports
        self.register_buffer("inv_freq", rope_inv_freq(cfg, "cpu"), persistent=False)
        self.compute_dtype: torch.dtype | None = None
        self.batch_head: torch.Tensor | None = None  # (V, H) bf16 head for batched decoding (`head`)
        self.head_q8: tuple[torch.Tensor, ...] | None = None  # or the same as int8 blocks (`kernels.use_for`)
        # Batch-invariant decode on CPU through corral's decode-attention kernel (set by `kernels.use_for`).
        self.cpu_kernels = False
        # The decoder stack of every pass over a KV cache (decode, verify, prefill chunks) in one C++ call
        # (csrc/decode_step.cpp), for 4-bit models on CPUs with AVX-512 VNNI; set by `kernels.use_for` with the
        # modules it was made from, so a later module swap (LoRA) turns it off instead of being ignored.
        self.decode_plan = None
        self._plan_modules: tuple[nn.Module | nn.Parameter, ...] = ()
        self._plan_swaps = -1
        self._plan_cache: tuple[int, ...] | None = None
        # Training: recompute each layer's activations in the backward pass instead of keeping them (memory for
        # time: about one more forward per step).
        self.grad_checkpointing = False

    def reset_rope(self, inv_freq: torch.Tensor | None = None) -> None:
        """Recompute the RoPE frequencies on the weights' device (after a meta-device build), or set given ones."""
        dev = self.model.embed_tokens.weight.device
        self.inv_freq = (inv_freq if inv_freq is not None else rope_inv_freq(self.config)).to(dev, torch.float32)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activation (and KV cache) dtype; the loader may keep embedding/head weights in another."""
        return self.compute_dtype or self.model.embed_tokens.weight.dtype

    def rope_angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, 1, T, hd) of tokens at `positions` (B, T), sin's first half negated (see apply_rope)."""
        ang = positions.to(torch.float32)[..., None] * self.inv_freq  # (B, T, hd/2)
        cos = torch.cat((ang, ang), dim=-1).cos()[:, None].to(self.dtype)  # (B, 1, T, hd)
        s = ang.sin()
        return cos, torch.cat((-s, s), dim=-1)[:, None].to(self.dtype)

    def _plan_usable(self) -> bool:
        """The decode plan still computes this model: none of the modules (or norm weights) it was made from has
        been swapped. Checked in full only after some module anywhere was swapped (~0.4 ms a step otherwise)."""
        if self.decode_plan is None:
            return False
        if self._plan_swaps == Swappable.swaps:
            return True
        now = tuple(x for layer in self.model.layers for x in (
            layer.input_layernorm.weight, layer.self_attn.qkv_proj, layer.self_attn.o_proj,
            layer.post_attention_layernorm.weight, layer.mlp.gate_up_proj, layer.mlp.down_proj))
        if len(now) != len(self._plan_modules) or any(a is not b for a, b in zip(now, self._plan_modules, strict=True)):
            self.decode_plan = None  # for good: the plan holds the old weights
            return False
        self._plan_swaps = Swappable.swaps
        return True

    @property
    def chunking_free(self) -> bool:
        """Whether a token's logits and KV are the same bits however its prompt was cut into forward passes (the
        CPU decode plan): a cached prefix can then be reused at any length, not only in whole prefill chunks."""
        return self._plan_usable()

    def release_cache(self) -> None:
        """Let go of the KV buffers the decode plan holds (the engine shrinks or drops its cache)."""
        if self.decode_plan is not None and self._plan_cache is not None:
            self.decode_plan.set_cache([], [])
            self._plan_cache = None

    def _fused_layers(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                      slots: torch.Tensor | None) -> torch.Tensor:
        """The layers of a pass over the cache (a decode step, a verify, a prefill chunk) in one C++ call: hidden
        states before the final norm."""
        key = (id(cache), cache.k[0].data_ptr(), cache.v[-1].data_ptr(), len(cache.k))
        if self._plan_cache != key:
            self.decode_plan.set_cache(cache.k, cache.v)
            self._plan_cache = key
        cos, sin = self.rope_angles(positions)
        return self.decode_plan.forward(x, cos, sin, positions.contiguous(), slots)

    def make_batch(
        self, positions: torch.Tensor, kv_len: int, slots: torch.Tensor | None = None, cache_len: int = 0,
        blocked: bool = False,
    ) -> Batch:
        """Rotary angles, causal mask and cache indices for tokens at `positions` (B, T) over `kv_len` keys."""
        cfg = self.config
        B, T = positions.shape
        dev = positions.device
        cos, sin = self.rope_angles(positions)
        keys = torch.arange(kv_len, device=dev)
        mask = keys.view(1, 1, 1, -1) <= positions[:, None, :, None]  # (B, 1, T, S)
        b = Batch(positions, cos, sin, mask, slots, kv_len)
        if cache_len:  # where the new keys/values go: (slot, head, position) as a row of the flattened cache
            rows = slots if slots is not None else torch.arange(B, device=dev)
            n_kv = cfg.num_key_value_heads
            heads = torch.arange(n_kv, device=dev)
            b.write_rows = ((rows.view(B, 1, 1) * n_kv + heads.view(1, -1, 1)) * cache_len
                            + positions.view(B, 1, T)).reshape(-1)
        if blocked and self.cpu_kernels:
            b.lengths = (positions + 1).contiguous()
        elif blocked:
            n_kv = cfg.num_key_value_heads
            n_rep = cfg.num_attention_heads // n_kv
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=dev).masked_fill_(~mask, float("-inf"))
            # rows ordered (rep, t) like the stacked queries; one copy per KV head, built once per step
            b.bias = bias.repeat(1, n_kv, n_rep, 1).view(B * n_kv, n_rep * T, kv_len)  # (B*n_kv, n_rep*T, S)
        return b

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        kv_len: int | None = None,
        slots: torch.Tensor | None = None,
        last_only: bool = False,
        batch_invariant: bool = False,
        return_hidden: bool = False,
        doc_ids: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) → logits (B, T, V) in fp32 (or (B, 1, V) with `last_only`).

        Without a cache this is a plain causal forward over positions 0..T-1 (training, scoring). With one, the
        new keys/values are written at `positions` and attention spans cache entries [0, kv_len).
        `doc_ids` (B, T), no cache: packed rows, several documents per row: a token attends only to earlier tokens
        of its own document (block-diagonal causal mask), and `positions` restart at each document.
        `keep` (B, T) bool: logits only at those positions, as (N, V) — training computes the head (a sixth of the
        model's FLOPs for SmolLM2) only where a loss applies.
        """
        B, T = input_ids.shape
        plain = positions is None
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if cache is None:
            b = self.make_batch(positions, T)
            b.causal = plain and doc_ids is None
            if doc_ids is not None:
                idx = torch.arange(T, device=input_ids.device)
                same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
                b.mask = (same & (idx[None, :] <= idx[:, None]))[:, None]  # (B, 1, T, T)
        else:
            kv_len = kv_len or cache.max_len
            # Decode on CPU: blocked attention when asked for batch invariance (the engine), or in half
            # precision (where it beats SDPA's CPU kernel); SDPA otherwise (fewer ops: 0.74x vs 0.61x llama.cpp).
            # The decode plan (CPU, 4-bit) runs every pass over the cache, prefill chunks too: faster than the
            # PyTorch layers at 128 tokens as well (39 vs 47 ms here), and each token's bits then depend only on
            # the tokens before it, never on how the prompt was cut into chunks.
            if self.decode_plan is not None and not return_hidden and self._plan_usable():
                x = self._fused_layers(self.model.embed_tokens(input_ids).float(), positions, cache, slots)
                return self.head(self.model.norm(x[:, -1:] if last_only else x), batch_invariant)
            small = T <= SMALL_T and input_ids.device.type == "cpu"
            blocked = small and (batch_invariant or self.dtype != torch.float32)
            if blocked:  # it reads whole blocks of keys
                kv_len = min(-(-kv_len // KV_BLOCK) * KV_BLOCK, cache.max_len)
            b = self.make_batch(positions, kv_len, slots, cache_len=cache.max_len, blocked=blocked)
        x = self.model.embed_tokens(input_ids).to(b.cos.dtype)
        ckpt = self.grad_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(layer, x, b, use_reentrant=False)
            else:
                x = layer(x, b, cache.k[i] if cache else None, cache.v[i] if cache else None)
        x = self.model.norm(x)
        if return_hidden:
            return x
        if keep is not None:
            return self.head(x[keep])
        if last_only:
            x = x[:, -1:]
        return self.head(x, batch_invariant)

    def head(self, x: torch.Tensor, batch_invariant: bool = False) -> torch.Tensor:
        """Final hidden states (..., H) → fp32 logits (..., V).

        `batch_head` (set by the loader beside fp16 head weights on CPU) serves batched decoding: an fp16
        matmul of 16 rows runs ~8x slower than bf16 on CPUs without fp16 units, and bf16 gives a row the same
        bits at any batch size; with corral's CPU kernels, int8 blocks (`head_q8`) replace it, twice as fast
        again. Its output is rounded to bf16 (steps of 0.06 at 10), so it only ranks: the top
        `RESCORE_K` logits of each row are recomputed in fp32 from the fp16 weights (multiply-and-sum, not a
        batched matmul, which would regroup with the batch size). A single sequence's decode step (a few rows)
        ranks on the int8 head too (0.33 vs 1.2 ms for one row here); passes over whole sequences (scoring,
        prompt logprobs) keep the exact fp16 head, whose every logit is exact.
        """
        xs = x.reshape(-1, x.shape[-1])  # 2-D: a 3-D view with a batch stride sends matmul down a copying path
        decode = xs.shape[0] <= SMALL_T  # a decode step's rows: int8 ranking serves them too
        if (batch_invariant or decode) and self.head_q8 is not None or batch_invariant and self.batch_head is not None:
            if self.head_q8 is not None:  # int8 weights x int8 activations (csrc/int4_linear.cpp), ~2x the bf16 rate
                flat = torch.ops.corral.int8_linear(xs.float(), *self.head_q8)  # (N, V)
            else:
                flat = F.linear(xs.to(self.batch_head.dtype), self.batch_head).float()
            idx = flat.topk(RESCORE_K, dim=-1).indices  # (N, K)
            exact = (self.lm_head.weight[idx].float() * xs.float()[:, None, :]).sum(-1)  # (N, K)
            flat.scatter_(1, idx, exact)
        else:
            head_dtype = getattr(self.lm_head, "weight", x).dtype  # the loader may keep the head in another dtype
            flat = self.lm_head(xs.to(head_dtype)).float()
        return flat.view(*x.shape[:-1], flat.shape[-1])
