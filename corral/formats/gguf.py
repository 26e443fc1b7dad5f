"""Read and write GGUF files (llama.cpp's format): metadata, tokenizer vocabulary and tensors.

Tensors are mapped to HF names, so the model sees one layout whatever file it came from. llama.cpp's converter
permutes the rows of Q and K so that its RoPE (adjacent pairs) matches HF's (rotate-half); `unpermute_qk` undoes it,
`permute_qk` redoes it when `write_gguf` exports a model.
Quantized tensors are dequantized with the `gguf` package, or — for Q4_0/Q4_1 — kept as 4-bit codes with per-group
scales so `corral.model.quant` can run them without ever making an fp32 copy.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corral.errors import InvalidArgumentError, ModelFormatError

if TYPE_CHECKING:
    from corral.config import ModelConfig

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


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half Q/K rows → llama.cpp's adjacent pairs: (n_head, 2, hd/2, ...) → (n_head, hd/2, 2, ...)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


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


class _Cursor:
    """Sequential little-endian reads over the file's header bytes; running past the end is a truncated file."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ModelFormatError(f"{self.path}: GGUF file is truncated (header ends at byte {len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        return bytes(self.take(self.unpack("Q"))).decode("utf-8", errors="replace")


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
       10: np.uint64, 11: np.int64, 12: np.float64}


def _value(c: _Cursor, vtype: int) -> Any:
    if vtype in _SCALARS:
        return c.unpack(_SCALARS[vtype])
    if vtype == 8:
        return c.string()
    if vtype == 9:
        itype, n = c.unpack("I"), c.unpack("Q")
        if itype in _NP:  # numeric arrays in one read
            arr = np.frombuffer(c.take(n * np.dtype(_NP[itype]).itemsize), dtype=_NP[itype])
            return arr.tolist()
        return [_value(c, itype) for _ in range(n)]
    raise ModelFormatError(f"{c.path}: unknown GGUF value type {vtype} at byte {c.pos}; the file is corrupt")


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order (ne0 = innermost), as llama.cpp writes it
    qtype: int
    offset: int  # absolute byte offset in the file
    n_bytes: int


class GGUFFile:
    """An open GGUF file: `metadata` (dict, all key/values) and `tensors()` (HF-named arrays).

    The header is parsed here rather than with `gguf.GGUFReader`, which builds a numpy view per array element and
    took 3.3 s on the default model's 98k-entry vocabulary (this parser: ~0.1 s). The `gguf` package still supplies
    the type table and the dequantizers. Errors are `ModelFormatError`.
    """

    def __init__(self, path: str | Path):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFormatError(f"{self.path}: no such file")
        size = self.path.stat().st_size
        if size < 24:
            raise ModelFormatError(f"{self.path}: not a GGUF file ({size} bytes)")
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        c = _Cursor(memoryview(self._mm), self.path)
        if bytes(c.take(4)) != GGUF_MAGIC:
            raise ModelFormatError(f"{self.path}: not a GGUF file (bad magic bytes)")
        version = c.unpack("I")
        if version not in (2, 3):
            raise ModelFormatError(f"{self.path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelFormatError(f"{self.path}: implausible header ({n_tensors} tensors, {n_kv} keys); corrupt file")
        self.metadata: dict[str, Any] = {}
        # key → (GGUF value type, item type of an array): an export copies keys with the types llama.cpp expects.
        self.value_types: dict[str, tuple[int, int | None]] = {}
        for _ in range(n_kv):
            key = c.string()
            vtype = c.unpack("I")
            item = struct.unpack_from("<I", c.buf, c.pos)[0] if vtype == 9 and c.pos + 4 <= len(c.buf) else None
            self.value_types[key] = (vtype, item)
            self.metadata[key] = _value(c, vtype)
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            n_dims = c.unpack("I")
            if n_dims > 4:
                raise ModelFormatError(f"{self.path}: tensor {name!r} has {n_dims} dimensions; corrupt file")
            shape = tuple(c.unpack("Q") for _ in range(n_dims))
            qtype, offset = c.unpack("I"), c.unpack("Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except (ValueError, KeyError):
                raise ModelFormatError(f"{self.path}: tensor {name!r} has unknown type {qtype}") from None
            n = int(np.prod(shape)) if shape else 1
            infos.append((name, shape, qtype, offset, n // block * type_size))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = -(-c.pos // align) * align
        self.tensor_infos = [TensorInfo(nm, sh, qt, data_start + off, nb) for nm, sh, qt, off, nb in infos]
        end = max((t.offset + t.n_bytes for t in self.tensor_infos), default=data_start)
        if end > size:
            raise ModelFormatError(f"{self.path}: truncated: tensors need {end} bytes, the file has {size}; "
                                   "re-download or re-export it")

    def _data(self, t: TensorInfo) -> np.ndarray:
        """The raw tensor: typed (rows, cols) for F32/F16, else uint8 (rows, row_bytes) blocks."""
        from gguf.constants import GGMLQuantizationType as Q

        raw = self._mm[t.offset:t.offset + t.n_bytes]
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        if t.qtype == Q.F32:
            return raw.view(np.float32).reshape(rows, -1)
        if t.qtype == Q.F16:
            return raw.view(np.float16).reshape(rows, -1)
        return raw.reshape(rows, -1)

    def array(self, key: str) -> list[Any] | None:
        """A metadata array such as `tokenizer.ggml.tokens`, or None when absent."""
        return self.metadata.get(key)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensor_infos]

    def tensor_types(self) -> dict[str, int]:
        """Count of tensors per GGUF type name (F32, Q4_1, ...)."""
        from gguf.constants import GGMLQuantizationType

        out: dict[str, int] = {}
        for t in self.tensor_infos:
            kind = GGMLQuantizationType(t.qtype).name
            out[kind] = out.get(kind, 0) + 1
        return out

    def tensors(self, n_head: int, n_kv_head: int, keep_q4: bool = False):
        """Yield (hf_name, array) with Q/K un-permuted. Q4_0/Q4_1 weights come as `Q4Tensor` with `keep_q4`."""
        from gguf.constants import GGMLQuantizationType as Q
        from gguf.quants import dequantize

        for t in self.tensor_infos:
            name = hf_name(t.name)
            if name is None:
                continue
            kind = Q(t.qtype).name
            data = self._data(t)
            try:
                # The embedding is a lookup table, not a matmul: it is always dequantized.
                if keep_q4 and kind in ("Q4_0", "Q4_1") and name.endswith(".weight") and "embed_tokens" not in name:
                    arr: Any = _q4_blocks(data, kind)
                elif t.qtype in (Q.F32, Q.F16):
                    arr = data
                else:
                    arr = dequantize(data, Q(t.qtype))
                arr = arr if isinstance(arr, Q4Tensor) else arr.reshape(tuple(reversed(t.shape)))
            except NotImplementedError:
                raise ModelFormatError(
                    f"{self.path}: tensor {t.name} has type {kind}, which the gguf package cannot dequantize") from None
            heads = n_head if ".q_proj." in name else n_kv_head if ".k_proj." in name else 0
            if heads:
                arr = arr.unpermute(heads) if isinstance(arr, Q4Tensor) else unpermute_qk(arr, heads)
            yield name, arr

    def rope_freq_factors(self) -> np.ndarray | None:
        """Llama 3.1-style GGUFs carry their rope scaling as a `rope_freqs.weight` tensor of divisors."""
        for t in self.tensor_infos:
            if t.name == "rope_freqs.weight":
                return np.array(self._data(t), dtype=np.float32).reshape(-1)  # a copy: the map is read-only
        return None


# --- writing ------------------------------------------------------------------------------------------------------

EXPORT_QUANTS = ("f16", "q8_0", "q4_0", "f32")
_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q4_0, ...
_GGUF_LAYER = {v: k for k, v in _LAYER_NAMES.items()}
_GGUF_TOP = {v: k for k, v in _TOP_NAMES.items()}


def gguf_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`: the inverse of `hf_name`."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m and m.group(2) in _GGUF_LAYER:
        return f"blk.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(.+)\.(weight|bias)", name)
    if m and m.group(1) in _GGUF_TOP:
        return f"{_GGUF_TOP[m.group(1)]}.{m.group(2)}"
    raise ModelFormatError(f"tensor {name}: GGUF has no name for it; corral exports Llama-family weights only")


def export_type(name: str, shape: tuple[int, ...], quant: str, tied: bool) -> Any:
    """The GGUF type of tensor `name` (GGUF name, HF-layout shape) in an export to `quant`, as llama.cpp's
    `llama-quantize` picks by default:
    - 1-D tensors (norms, biases, rope factors) stay F32;
    - f32/f16: every 2-D tensor in that type; q8_0: every 2-D tensor Q8_0;
    - q4_0: Q4_0, except the output matrix (`output`, or `token_embd` when tied, as it is the output too), which
      llama-quantize puts in Q6_K. The gguf package cannot quantize Q6_K, so it gets Q8_0: llama-quantize's own
      choice for an output whose rows are not a multiple of 256;
    - a row (the last dimension) that is not a multiple of the 32-weight block: F16, as convert_hf_to_gguf.py
      falls back.
    """
    from gguf import GGMLQuantizationType as Q

    if len(shape) < 2:
        return Q.F32
    if quant in ("f32", "f16"):
        return Q.F32 if quant == "f32" else Q.F16
    if shape[-1] % 32:
        return Q.F16
    is_output = name == "output.weight" or (tied and name == "token_embd.weight")
    return Q.Q8_0 if quant == "q8_0" or is_output else Q.Q4_0


def _value_type(value: Any) -> tuple[Any, Any]:
    """(GGUF type, item type) for a metadata value without a recorded type: ints as UINT32, the type llama.cpp
    reads sizes and token ids as (it checks key types strictly), int arrays as INT32 (`token_type`)."""
    from gguf import GGUFValueType as V

    if isinstance(value, list):
        first = value[0]
        item = V.STRING if isinstance(first, str) else V.BOOL if isinstance(first, bool) else \
            V.FLOAT32 if isinstance(first, float) else V.INT32
        return V.ARRAY, item
    if isinstance(value, bool):
        return V.BOOL, None
    if isinstance(value, int):
        return (V.UINT32 if value >= 0 else V.INT32), None
    return (V.FLOAT32 if isinstance(value, float) else V.STRING), None


def write_gguf(path: str | Path, tensors: dict[str, np.ndarray], config: ModelConfig, quant: str,
               metadata: dict[str, Any], value_types: dict[str, tuple[int, int | None]] | None = None,
               rope_factors: np.ndarray | None = None) -> dict[str, int]:
    """Write a llama-architecture GGUF that llama.cpp loads; return the count of tensors per GGUF type.

    `tensors`: fp32 arrays by HF name, in HF layout (Q/K rows are permuted here; `lm_head.weight` is left out when
    the embeddings are tied). Each gets `export_type(..., quant)`. The `llama.*` keys come from `config`;
    `metadata` adds the rest (`general.*`, `tokenizer.*`), typed as `value_types` says (`GGUFFile.value_types` of a
    source file) or else by `_value_type`. `rope_factors`: per-frequency divisors (Llama 3.1 scaling), written as
    `rope_freqs.weight` the way convert_hf_to_gguf.py does. The file appears at `path` only once complete.
    """
    import os

    import gguf
    from gguf import GGUFValueType as V

    if quant not in EXPORT_QUANTS:
        raise InvalidArgumentError(f"quantization {quant!r}: choose one of {', '.join(EXPORT_QUANTS)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(int(tensors["model.embed_tokens.weight"].shape[0]))
    w.add_file_type(_FILE_TYPES[quant])
    if quant.startswith("q"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in metadata.items():
        if (value_types or {}).get(key):
            vtype, item = value_types[key]
            w.add_key_value(key, value, V(vtype), None if item is None else V(item))
        elif value is not None and value != []:
            w.add_key_value(key, value, *_value_type(value))

    counts: dict[str, int] = {}

    def put(name: str, arr: np.ndarray) -> None:
        kind = export_type(name, arr.shape, quant, config.tie_word_embeddings)
        if kind.name in ("F32", "F16"):
            w.add_tensor(name, arr.astype(np.float32 if kind.name == "F32" else np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, kind), raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1

    if rope_factors is not None:
        put("rope_freqs.weight", np.asarray(rope_factors, np.float32))
    for name, arr in tensors.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        heads = (config.num_attention_heads if ".q_proj." in name else
                 config.num_key_value_heads if ".k_proj." in name else 0)
        put(gguf_name(name), np.ascontiguousarray(permute_qk(arr, heads) if heads else arr, np.float32))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts
