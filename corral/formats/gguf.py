"""Read GGUF files (llama.cpp's format): metadata, tokenizer vocabulary and tensors.

Tensors are mapped to HF names, so the model sees one layout whatever file it came from. llama.cpp's converter
permutes the rows of Q and K so that its RoPE (adjacent pairs) matches HF's (rotate-half); `unpermute_qk` undoes it.
Quantized tensors are dequantized with the `gguf` package, or — for Q4_0/Q4_1 — kept as 4-bit codes with per-group
scales so `corral.model.quant` can run them without ever making an fp32 copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.errors import ModelFormatError

GGUF_MAGIC = b"GGUF"

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; None for tensors corral has no use for."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute` of Q/K rows: (n_head, hd/2, 2, ...) → (n_head, 2, hd/2, ...)."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


@dataclass
class Q4Tensor:
    """A Q4_0/Q4_1 weight kept 4-bit: w[n, k] = codes[n, k] * scale[n, k // 32] + offset[n, k // 32]."""

    codes: np.ndarray  # (N, K) uint8 in [0, 15]
    scale: np.ndarray  # (N, K // 32) float32
    offset: np.ndarray  # (N, K // 32) float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def dequantize(self) -> np.ndarray:
        n, k = self.codes.shape
        w = self.codes.reshape(n, k // 32, 32).astype(np.float32) * self.scale[..., None] + self.offset[..., None]
        return w.reshape(n, k)

    def unpermute(self, n_head: int) -> Q4Tensor:
        return Q4Tensor(unpermute_qk(self.codes, n_head), unpermute_qk(self.scale, n_head),
                        unpermute_qk(self.offset, n_head))


def _q4_blocks(raw: np.ndarray, kind: str) -> Q4Tensor:
    """Split GGUF Q4_0 (d, 16 bytes) / Q4_1 (d, m, 16 bytes) blocks of 32 weights into codes and scales."""
    n = raw.shape[0]
    hdr = 2 if kind == "Q4_0" else 4
    blocks = raw.reshape(n, -1, hdr + 16)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., hdr:]
    # Block layout: byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, -1)
    if kind == "Q4_0":
        return Q4Tensor(codes, d, -8.0 * d)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return Q4Tensor(codes, d, m)


class GGUFFile:
    """An open GGUF file: `metadata` (dict) and `tensors()` (HF-named arrays). Errors are `ModelFormatError`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFormatError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelFormatError(f"{self.path}: not a GGUF file (bad magic bytes)")
        try:
            from gguf import GGUFReader

            self.reader = GGUFReader(self.path)
        except Exception as e:  # the reader raises bare ValueError/IndexError/OSError on bad files
            raise ModelFormatError(
                f"{self.path}: GGUF file is truncated or corrupt ({type(e).__name__}: {e}); re-download or re-export it"
            ) from None
        self.metadata: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                       "tokenizer.ggml.scores"):
                continue  # large arrays: read on demand by `array()`
            try:
                self.metadata[key] = field.contents()
            except Exception:  # noqa: BLE001 - an unreadable field we do not need must not stop loading
                continue
        self._check_sizes()

    def _check_sizes(self) -> None:
        end = max((t.data_offset + t.n_bytes for t in self.reader.tensors), default=0)
        size = self.path.stat().st_size
        if end > size:
            raise ModelFormatError(f"{self.path}: truncated: tensors need {end} bytes, the file has {size}")

    def array(self, key: str) -> list[Any] | None:
        """A (large) metadata array such as `tokenizer.ggml.tokens`, or None when absent."""
        field = self.reader.fields.get(key)
        return None if field is None else field.contents()

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.reader.tensors]

    def tensor_types(self) -> dict[str, int]:
        """Count of tensors per GGUF type name (F32, Q4_1, ...)."""
        out: dict[str, int] = {}
        for t in self.reader.tensors:
            out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + 1
        return out

    def tensors(self, n_head: int, n_kv_head: int, keep_q4: bool = False):
        """Yield (hf_name, array) with Q/K un-permuted. Q4_0/Q4_1 weights come as `Q4Tensor` with `keep_q4`."""
        from gguf import GGMLQuantizationType as Q
        from gguf.quants import dequantize

        for t in self.reader.tensors:
            name = hf_name(t.name)
            if name is None:
                continue
            kind = t.tensor_type.name
            try:
                if keep_q4 and kind in ("Q4_0", "Q4_1") and name.endswith(".weight"):
                    arr: Any = _q4_blocks(np.asarray(t.data), kind)
                elif t.tensor_type in (Q.F32, Q.F16):
                    arr = np.asarray(t.data).reshape(tuple(reversed([int(x) for x in t.shape])))
                else:
                    arr = dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise ModelFormatError(f"{self.path}: tensor {t.name} has type {kind}, which gguf cannot dequantize") from None
            heads = n_head if ".q_proj." in name else n_kv_head if ".k_proj." in name else 0
            if heads:
                arr = arr.unpermute(heads) if isinstance(arr, Q4Tensor) else unpermute_qk(arr, heads)
            yield name, arr

    def rope_freq_factors(self) -> np.ndarray | None:
        """Llama 3.1-style GGUFs carry their rope scaling as a `rope_freqs.weight` tensor of divisors."""
        for t in self.reader.tensors:
            if t.name == "rope_freqs.weight":
                return np.asarray(t.data, dtype=np.float32).reshape(-1)
        return None
