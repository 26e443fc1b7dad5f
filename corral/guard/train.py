"""Guard training: `corral finetune --task guard` (and `corral distill --task guard`) is the one training loop
(`corral.train.loop`) with `GuardTask`, the data side that reads labelled guard rows (`corral.guard.dataset`). The
loop knows nothing of guards; this module is where the two meet:

    finetune(cfg, task=GuardTask(cfg))   # cfg.task == "guard"
"""

from __future__ import annotations

from pathlib import Path

from corral.guard.dataset import load_guard_examples, repeat_unsafe, save_policy
from corral.guard.taxonomy import load_taxonomy
from corral.tokenizer import Tokenizer
from corral.train.config import FinetuneConfig
from corral.train.data import Example
from corral.train.loop import Task


class GuardTask(Task):
    """Guard training's data side of the one training loop: labelled guard rows in the policy's prompt format
    (`load_guard_examples`; a path may name a bundled set), each unsafe training row `guard_repeat_unsafe` times,
    and the policy written beside the weights (`corral guard --adapter` reads it)."""

    def __init__(self, cfg: FinetuneConfig):
        self.taxonomy = load_taxonomy(cfg.guard_policy)  # a bad policy file is reported before the model loads

    def load(self, cfg: FinetuneConfig, path: str | Path, tok: Tokenizer, template: str | None
             ) -> tuple[list[Example], list[str]]:
        return load_guard_examples(path, tok, cfg.max_seq_len, self.taxonomy, template, cfg.skip_bad_lines)

    def training_split(self, cfg: FinetuneConfig, train: list[Example]) -> list[Example]:
        return repeat_unsafe(train, cfg.guard_repeat_unsafe)  # after the split: never one row on both sides

    def save(self, cfg: FinetuneConfig, folder: Path) -> None:
        save_policy(self.taxonomy, folder)

