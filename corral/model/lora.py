"""LoRA as a module swap, and its adapter in PEFT's format (so `peft` loads what corral trains, and back).

`apply_lora` replaces chosen projections (by their HF names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
down_proj) with `LoRALinear`, which keeps the original module frozen inside and adds B·A·(alpha/r); nothing else in
the model changes, so the same decoder serves full fine-tuning, LoRA and (with a quantized base module) QLoRA.
`save_adapter` writes `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
(`base_model.model.<module>.lora_A.weight`); `load_adapter` reads them; `merge_lora` folds B·A into the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from corral.errors import InvalidArgumentError, ModelFormatError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """y = base(x) + B(A(dropout(x))) * alpha / r, with `base` frozen and B zero at the start (PEFT's init)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base, self.r, self.alpha = base, r, alpha
        self.in_features, self.out_features = base.in_features, base.out_features
        dev = next(base.parameters(), next(base.buffers(), torch.empty(0))).device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lora_A.weight
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x).to(a.dtype))).to(x.dtype) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """B @ A * scaling, (out, in) fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling


def apply_lora(model: nn.Module, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
               targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS) -> list[str]:
    """Swap every target projection for a `LoRALinear` and freeze everything else. Returns the swapped names."""
    if r < 1:
        raise InvalidArgumentError(f"LoRA rank must be >= 1, got {r}")
    unknown = set(targets) - set(DEFAULT_TARGETS)
    if unknown:
        raise InvalidArgumentError(f"unknown LoRA target(s) {sorted(unknown)}; choose from "
                                   f"{', '.join(DEFAULT_TARGETS)}")
    for name, mod in model.named_modules():
        if getattr(mod, "qkv_proj", None) is not None or getattr(mod, "gate_up_proj", None) is not None:
            raise InvalidArgumentError(f"{name} has fused projections (an inference-only layout); load the model "
                                       "for training without fusing to apply LoRA")
    for p in model.parameters():
        p.requires_grad_(False)
    swapped = []
    for name, mod in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if child in targets and not isinstance(mod, LoRALinear) and hasattr(mod, "in_features"):
            setattr(model.get_submodule(parent_name), child, LoRALinear(mod, r, alpha, dropout))
            swapped.append(name)
    if not swapped:
        raise InvalidArgumentError(f"no module named {', '.join(targets)} in this model")
    return swapped


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's names."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous()
    return out


def save_adapter(model: nn.Module, folder: str | Path, base_model: str = "", dtype: torch.dtype | None = None,
                 tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` in PEFT's format into `folder`. `tensors`
    (PEFT names, as `lora_state_dict`) replaces the model's own: whole tensors gathered from FSDP shards."""
    from safetensors.torch import save_file

    mods = lora_modules(model)
    if not mods:
        raise InvalidArgumentError("the model has no LoRA modules to save")
    first = next(iter(mods.values()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = sorted({n.rpartition(".")[2] for n in mods})
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": first.r, "lora_alpha": first.alpha, "lora_dropout": dropout, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    sd = {k: (v.to(dtype) if dtype else v).cpu() for k, v in (tensors or lora_state_dict(model)).items()}
    save_file(sd, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def load_adapter(model: nn.Module, folder: str | Path) -> list[str]:
    """Apply the PEFT LoRA adapter in `folder` to `model` (module swap, then its weights)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise ModelFormatError(f"{folder}: not a PEFT adapter (needs adapter_config.json and "
                               "adapter_model.safetensors)")
    cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("use_rslora"):
        raise ModelFormatError(f"{cfg_path}: only plain LoRA adapters are supported (peft_type LORA, no DoRA or "
                               "rsLoRA)")
    targets = cfg["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    swapped = apply_lora(model, int(cfg["r"]), float(cfg["lora_alpha"]), 0.0, targets)
    sd = load_file(str(w_path))
    sd = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v for k, v in sd.items()}
    mods = lora_modules(model)
    expected = {f"{PEFT_PREFIX}{n}.lora_{ab}.weight" for n in mods for ab in "AB"}
    if set(sd) != expected:
        missing, extra = sorted(expected - set(sd))[:3], sorted(set(sd) - expected)[:3]
        raise ModelFormatError(f"{w_path}: adapter tensors do not match the model (missing {missing}, "
                               f"unexpected {extra})")
    for name, m in mods.items():
        for ab, lin in (("A", m.lora_A), ("B", m.lora_B)):
            t = sd[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"]
            if t.shape != lin.weight.shape:
                raise ModelFormatError(f"{w_path}: {name}.lora_{ab} has shape {tuple(t.shape)}, "
                                       f"the model needs {tuple(lin.weight.shape)}")
            with torch.no_grad():
                lin.weight.copy_(t)
    return swapped


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA delta into its base `nn.Linear` and swap the plain layer back. Returns the count."""
    n = 0
    for name, m in list(lora_modules(model).items()):
        base = m.base
        if not isinstance(base, nn.Linear):
            raise InvalidArgumentError(f"{name}: merging needs a plain Linear base (dequantize a QLoRA base first)")
        with torch.no_grad():
            base.weight += m.delta_weight().to(base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, base)
        n += 1
    return n
