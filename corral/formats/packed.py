"""The on-disk cache of a GGUF model in the form corral runs it: safetensors, one file per model file and kernel build.

Loading a Q4 GGUF for CPU means parsing its metadata, splitting its blocks, packing them for PyTorch, then repacking
them for corral's kernels and quantizing the head to int8 (~2 s and ~150 MB of temporaries for the default model).
The first load writes the result here; later loads read it back (`load_packed`) and skip all of that. The tokenizer
is cached beside it as JSON.

The key: the GGUF's size, modification time and a hash of its first and last MiB (hashing the whole file would
cost as much as the load it saves), plus what else decides the packed form (`extra`: the kernels' build, the
format version). A changed file gets a new key; stale entries are never read.
Where: `$CORRAL_CACHE_DIR`, else `~/.cache/corral`, under `packed/`. Writing is best effort: a read-only or full
disk only costs the next load its speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
VERSION = "1"


def cache_dir() -> Path:
    return Path(os.environ.get("CORRAL_CACHE_DIR") or Path.home() / ".cache" / "corral") / "packed"


def file_key(path: Path, extra: str = "") -> str:
    st = path.stat()
    h = hashlib.sha1(f"{VERSION}|{st.st_size}|{st.st_mtime_ns}|{extra}|".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return f"{path.stem[:40]}-{h.hexdigest()[:16]}"


def load_packed(key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tensors, metadata) of a cached model, or None when there is none (or it cannot be read)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    f = cache_dir() / f"{key}.safetensors"
    if not f.is_file():
        return None
    try:
        with safe_open(str(f), framework="pt") as h:
            meta = json.loads(h.metadata()["corral"])
        return load_file(str(f)), meta
    except Exception as e:  # noqa: BLE001 - a damaged entry is reloaded from the GGUF and rewritten
        log.warning("packed model cache %s unreadable (%s); loading from the GGUF", f, e)
        return None


def save_packed(key: str, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    _write(f"{key}.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"corral": json.dumps(meta)}))


def load_json(key: str, kind: str) -> Any:
    f = cache_dir() / f"{key}.{kind}.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return None


def save_json(key: str, kind: str, value: Any) -> None:
    _write(f"{key}.{kind}.json", lambda tmp: tmp.write_text(json.dumps(value)))


def _write(name: str, write) -> None:
    """Write through a temporary file and rename it, so a reader never sees half a file."""
    d = cache_dir()
    tmp = d / f".{name}.{os.getpid()}.tmp"
    try:
        d.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, d / name)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own errors for I/O too; never fail the load
        log.info("could not write the packed model cache %s (%s); the next load repacks", d / name, e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
