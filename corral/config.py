"""ModelConfig: the shape of a Llama-family decoder, read from an HF `config.json` or GGUF metadata.

No torch here: the registry and the CLI read configs without paying for the torch import.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import ModelFormatError

SUPPORTED_HF_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_GGUF_ARCHITECTURES = ("llama",)


@dataclass
class ModelConfig:
    """Everything the model needs to build itself; names follow HF's `LlamaConfig`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelFormatError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}: fix the model's config"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "linear", "default"):
                raise ModelFormatError(
                    f"rope_scaling type {kind!r} is not supported (supported: llama3, linear, default)"
                )

    @property
    def num_parameters(self) -> int:
        """Parameter count, the way HF counts it (tied embeddings once)."""
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * self.num_attention_heads * hd * 2 + h * self.num_key_value_heads * hd * 2
        layer = attn + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + emb + h

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], where: str = "config.json") -> ModelConfig:
        """Build from the dict of an HF `config.json`; `where` names the file in errors."""
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") != "llama" and not any(a in SUPPORTED_HF_ARCHITECTURES for a in archs):
            raise ModelFormatError(
                f"{where}: architecture {archs or cfg.get('model_type')!r} is not supported; "
                f"corral runs Llama-family models ({', '.join(SUPPORTED_HF_ARCHITECTURES)})"
            )
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            kw = dict(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
            )
        except KeyError as e:
            raise ModelFormatError(f"{where}: missing required key {e.args[0]!r}; is this a Llama config?") from None
        except (TypeError, ValueError) as e:
            raise ModelFormatError(f"{where}: a size field is not an integer ({e})") from None
        known = set(kw) | {
            "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings",
            "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "torch_dtype", "rope_parameters",
        }
        # transformers >= 5 writes rope settings as `rope_parameters` (theta inside); published checkpoints use
        # top-level `rope_theta` / `rope_scaling`.
        rope = dict(cfg.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        return cls(
            **kw,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            extra={k: v for k, v in cfg.items() if k not in known},
        )

    @classmethod
    def from_hf_file(cls, path: str | Path) -> ModelConfig:
        """Read an HF `config.json`; a malformed file is one `ModelFormatError`."""
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelFormatError(f"{path}: not found; an HF model folder needs config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{path}: not valid JSON ({e}); re-download or fix the file") from None
        if not isinstance(cfg, dict):
            raise ModelFormatError(f"{path}: expected a JSON object at the top level")
        return cls.from_hf_dict(cfg, where=str(path))

    @classmethod
    def from_gguf_metadata(cls, md: dict[str, Any], vocab_size: int, tied: bool, where: str) -> ModelConfig:
        """Build from GGUF key/values (`general.architecture`, `llama.*`)."""
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_GGUF_ARCHITECTURES:
            raise ModelFormatError(
                f"{where}: GGUF architecture {arch!r} is not supported; corral runs Llama-family models "
                f"(general.architecture = {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
            )
        p = f"{arch}."
        try:
            heads = int(md[p + "attention.head_count"])
            hidden = int(md[p + "embedding_length"])
            cfg = cls(
                vocab_size=vocab_size,
                hidden_size=hidden,
                intermediate_size=int(md[p + "feed_forward_length"]),
                num_hidden_layers=int(md[p + "block_count"]),
                num_attention_heads=heads,
                num_key_value_heads=int(md.get(p + "attention.head_count_kv", heads)),
                head_dim=int(md.get(p + "attention.key_length", hidden // heads)),
                rms_norm_eps=float(md.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
                rope_theta=float(md.get(p + "rope.freq_base", 10000.0)),
                max_position_embeddings=int(md.get(p + "context_length", 2048)),
                tie_word_embeddings=tied,
                bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
                eos_token_id=md.get("tokenizer.ggml.eos_token_id"),
            )
        except KeyError as e:
            raise ModelFormatError(f"{where}: GGUF metadata lacks {e.args[0]!r}; the file is incomplete") from None
        scaling = md.get(p + "rope.scaling.type")
        if scaling == "linear":
            cfg.rope_scaling = {"rope_type": "linear", "factor": float(md[p + "rope.scaling.factor"])}
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` for this model, so transformers loads what corral writes."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**self.extra, "architectures": ["LlamaForCausalLM"], "model_type": "llama", **d}
