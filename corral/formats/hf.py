"""Read HF model folders: `config.json` + `model.safetensors`, or shards listed in `model.safetensors.index.json`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from corral.errors import ModelFormatError


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder, in shard order. Refuses pickles (`pytorch_model.bin`)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelFormatError(f"{index}: malformed shard index ({e})") from None
        files = sorted({folder / f for f in weight_map.values()})
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    else:
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = (f" (found {', '.join(pickles)}: corral never loads pickles; convert them to safetensors)"
                if pickles else "")
        raise ModelFormatError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")
    for f in files:
        if not f.exists():
            raise ModelFormatError(f"{f}: shard listed in the index is missing")
    return files


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder, memory-mapped by safetensors (no copy until a dtype or device change)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in safetensors_files(folder):
        try:
            sd.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelFormatError(f"{f}: truncated or corrupt safetensors file ({e}); re-download it") from None
    return sd
