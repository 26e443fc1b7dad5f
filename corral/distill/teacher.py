"""The teacher's side of distillation: online (a frozen model run beside the student at every step) or offline
(its top-k next-token log-probabilities computed once over the training rows and written to a safetensors file,
so later epochs, resumed runs and other students never run the teacher again).

Both hand the loss the teacher at exactly the student's loss positions (the `keep` mask of the training loop:
where a label applies), in the same order (row by row, position by position).

Cache layout (`teacher_topk.safetensors`): per training row, `<key>.logprobs` (n, k) fp16 and `<key>.ids` (n, k)
int32, where n is that row's number of loss positions and key a hash of the row's token ids, labels and positions.
Rows are looked up by content, so a cache stays valid for any order, batch size or number of processes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from corral.distill.losses import TopK
from corral.errors import InvalidArgumentError

CACHE_FILE = "teacher_topk.safetensors"


def row_key(row: Any) -> str:
    """A stable name for a training row (`Example` or `Packed`): a hash of everything the model sees of it."""
    h = hashlib.sha1()
    for part in (row.input_ids, row.labels, getattr(row, "position_ids", None), getattr(row, "doc_ids", None)):
        h.update(json.dumps(part).encode())
    return h.hexdigest()[:20]


class OnlineTeacher:
    """A frozen model whose logits at the loss positions are computed at every step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def targets(self, batch: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
        return self.model(batch["ids"], positions=batch["positions"], doc_ids=batch["doc_ids"], keep=keep)


class CachedTeacher:
    """Top-k log-probabilities read from a cache file written by `write_cache`."""

    def __init__(self, path: Path, device: torch.device):
        self.path, self.device = path, device
        self._file = safe_open(str(path), framework="pt")
        meta = self._file.metadata() or {}
        self.k = int(meta.get("k", 0))

    def targets(self, batch: dict[str, Any], keep: torch.Tensor) -> TopK:
        lps, ids = [], []
        for row in batch["rows"]:
            key = row_key(row)
            try:
                lps.append(self._file.get_tensor(f"{key}.logprobs").float())  # fp16 on disk; CPU autocast refuses it
                ids.append(self._file.get_tensor(f"{key}.ids"))
            except Exception:  # noqa: BLE001 - safetensors raises its own error type for a missing key
                raise InvalidArgumentError(f"{self.path}: no teacher entry for a training row; the data changed "
                                           "since the cache was written — delete the file to rebuild it") from None
        out = TopK(torch.cat(lps).to(self.device), torch.cat(ids).to(self.device))
        if out.ids.shape[0] != int(keep.sum()):
            raise InvalidArgumentError(f"{self.path}: cached positions do not match the batch's; delete the file "
                                       "to rebuild it")
        return out


@torch.no_grad()
def write_cache(teacher: torch.nn.Module, rows: list[Any], path: Path, k: int, device: torch.device,
                batch_size: int = 4, autocast: Any = None, progress: Any = None) -> Path:
    """Run the teacher once over `rows` and write each row's top-k log-probabilities at its loss positions."""
    from corral.train.data import collate, loss_targets

    teacher.eval()
    tensors: dict[str, torch.Tensor] = {}
    done = set()
    for i in range(0, len(rows), batch_size):
        chunk = [r for r in rows[i: i + batch_size] if row_key(r) not in done]
        if not chunk:
            continue
        batch = collate(chunk, device)
        _, keep = loss_targets(batch)
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = teacher(batch["ids"], positions=batch["positions"], doc_ids=batch["doc_ids"], keep=keep)
        top = F.log_softmax(logits.float(), -1).topk(k, dim=-1)
        counts = keep.sum(1).tolist()
        start = 0
        for row, n in zip(chunk, counts, strict=True):
            key = row_key(row)
            tensors[f"{key}.logprobs"] = top.values[start: start + n].to(torch.float16).cpu().contiguous()
            tensors[f"{key}.ids"] = top.indices[start: start + n].to(torch.int32).cpu().contiguous()
            done.add(key)
            start += n
        if progress:
            progress(len(chunk))
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"k": str(k), "rows": str(len(done))})
    tmp.replace(path)
    return path
