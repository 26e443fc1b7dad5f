"""`export_gguf`: any model corral loads (GGUF, HF folder, a base plus a LoRA adapter) → one GGUF file llama.cpp runs.

The model is loaded as every verb loads it (`load_model`, fp32 on the CPU, the adapter merged), so what is written
is what corral runs; `formats.gguf.write_gguf` knows the file layout. The tokenizer travels along: a GGUF source's
`tokenizer.*` keys (chat template included) are copied with their types, whatever the vocabulary kind; an HF
folder's tokenizer.json becomes gpt2-BPE keys (`tokenizer.gguf_vocab`). Rope scaling (Llama 3.1's, or a GGUF's
`rope_freqs`) is read off the loaded model's frequencies and written as a `rope_freqs.weight` tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corral.errors import InvalidArgumentError, TokenizerError
from corral.formats.gguf import EXPORT_QUANTS, GGUFFile, write_gguf
from corral.model.llama import LlamaForCausalLM, rope_inv_freq
from corral.model.loader import load_model

# Source keys an export does not copy: the writer sets them for the new file.
_NOT_COPIED = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


@dataclass
class ExportResult:
    path: Path
    quant: str
    tensor_types: dict[str, int]  # GGUF type → tensor count
    size_bytes: int


def check_export_args(out: str | Path, quant: str, force: bool = False) -> Path:
    """Refuse a bad quantization or an existing output before any model is loaded."""
    if quant not in EXPORT_QUANTS:
        raise InvalidArgumentError(f"--quant {quant!r}: choose one of {', '.join(EXPORT_QUANTS)}")
    out = Path(out)
    if out.is_dir():
        raise InvalidArgumentError(f"--out {out} is a folder; give the .gguf file to write")
    if out.exists() and not force:
        raise InvalidArgumentError(f"--out {out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise InvalidArgumentError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def rope_factors(model: LlamaForCausalLM) -> np.ndarray | None:
    """The per-frequency divisors between plain RoPE and the model's own frequencies; None when there are none."""
    plain = rope_inv_freq(dataclasses.replace(model.config, rope_scaling=None))
    factors = (plain / model.inv_freq.float().cpu()).numpy()
    return None if np.allclose(factors, 1.0, rtol=1e-6) else factors


def export_gguf(model: str | Path | None, out: str | Path, quant: str = "f16", adapter: str | Path | None = None,
                force: bool = False) -> ExportResult:
    """Write `model` (a path or registry name; None = the default model), with `adapter` merged in, to `out` as a
    GGUF with its tokenizer and chat template. `quant`: f16, q8_0, q4_0 or f32 (see `formats.gguf.export_type`)."""
    from corral.tokenizer import gguf_vocab

    out = check_export_args(out, quant, force)
    lm = load_model(model, device="cpu", dtype="float32", adapter=adapter)
    tensors = {k: v.detach().float().cpu().numpy() for k, v in lm.model.state_dict().items()}
    n_vocab = tensors["model.embed_tokens.weight"].shape[0]
    if lm.source == "gguf":
        g = GGUFFile(lm.path)
        keep = [k for k in g.metadata if k.startswith(("general.", "tokenizer.")) and k not in _NOT_COPIED]
        metadata, types = {k: g.metadata[k] for k in keep}, {k: g.value_types[k] for k in keep}
        if "tokenizer.ggml.tokens" not in metadata:
            raise TokenizerError(f"{lm.path}: the GGUF carries no tokenizer, and llama.cpp needs one; export the "
                                 "HF folder of the model instead")
    else:
        metadata, types = {"general.name": lm.path.name, **gguf_vocab(lm.path, n_vocab)}, {}
    counts = write_gguf(out, tensors, lm.config, quant, metadata, types, rope_factors(lm.model))
    return ExportResult(out, quant, counts, out.stat().st_size)
