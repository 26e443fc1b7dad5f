"""`FinetuneConfig`: the fields of a fine-tuning run — the CLI's options, a YAML file's keys and the Python API's
arguments are all this one dataclass. No torch import here, so `corral --help` stays instant."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.errors import InvalidArgumentError


@dataclass
class FinetuneConfig:
    model: str
    data: str
    out: str = "runs/finetune"
    method: str = "lora"  # lora | full
    val_file: str | None = None
    val_split: float = 0.0
    max_seq_len: int = 512
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    clip: float = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    eval_every: int = 50
    save_every: int = 100
    seed: int = 0
    device: str = "cpu"
    chat_template: str | None = None
    skip_bad_lines: bool = False
    resume: bool = False  # continue from `out`/checkpoint

    def check(self) -> None:
        checks = [(self.method in ("lora", "full"), f"--method {self.method}: choose lora or full"),
                  (self.batch_size >= 1, "--batch-size must be >= 1"),
                  (self.grad_accum >= 1, "--grad-accum must be >= 1"),
                  (self.lr > 0, "--lr must be > 0"), (self.max_seq_len >= 16, "--max-seq-len must be >= 16"),
                  (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
                  (self.epochs > 0, "--epochs must be > 0"),
                  (self.eval_every >= 1 and self.save_every >= 1, "--eval-every and --save-every must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise InvalidArgumentError(msg)
