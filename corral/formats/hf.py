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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


def save_hf_folder(model: torch.nn.Module, config: object, tok: object, source: Path, out: Path,
                   dtype: torch.dtype = torch.float32) -> Path:
    """Write an HF folder transformers loads: `config.json`, `model.safetensors` and the tokenizer files (copied
    from an HF source folder, or written from the tokenizer a GGUF carried: tokenizer.json + chat template)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tied = getattr(config, "tie_word_embeddings", False)
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()
          if not (tied and k == "lm_head.weight")}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_hf_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    write_tokenizer_files(tok, source, out)
    return out


def write_tokenizer_files(tok: object, source: Path, out: Path) -> None:
    """The tokenizer files of an HF folder: copied from an HF source folder, or written from the tokenizer a GGUF
    carried (tokenizer.json + tokenizer_config.json with the chat template + generation_config.json)."""
    import shutil

    if source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copy(source / name, out / name)
    elif hasattr(tok, "_tok"):  # a GGUF's vocabulary, held as a `tokenizers` tokenizer
        (out / "tokenizer.json").write_text(tok._tok.to_str())
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": tok.chat_template,
              "bos_token": tok.bos_token or None, "eos_token": tok.eos_token or None,
              "add_bos_token": bool(tok.add_bos)}
        (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": sorted(tok.stop_ids)}) + "\n")
