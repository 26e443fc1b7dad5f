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
    method: str = "lora"  # lora | qlora | full
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
    device: str = "auto"  # auto | cpu | cuda[:N]; under torchrun, each process takes cuda:LOCAL_RANK
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with bf16 instructions, else fp32) | bf16 | fp32
    packing: bool = False  # several examples per row of max_seq_len tokens (block-diagonal attention)
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 slower
    compile: bool = False  # torch.compile each decoder layer: fused elementwise ops; a first step ~30 s slower
    chat_template: str | None = None
    skip_bad_lines: bool = False
    resume: bool = False  # continue from `out`/checkpoint
    task: str = "sft"  # sft: chat or prompt/completion lines | guard: labelled guard rows (corral.guard.dataset)
    guard_policy: str | None = None  # task guard: the policy YAML the prompts list (None: Llama Guard 3's S1-S14)
    guard_repeat_unsafe: int = 1  # task guard: each unsafe training row this many times per epoch

    def check(self) -> None:
        checks = [(self.method in ("lora", "qlora", "full"), f"--method {self.method}: choose lora, qlora or full"),
                  (self.precision in ("auto", "bf16", "fp32"), f"--precision {self.precision}: choose auto, bf16 or "
                                                                 "fp32"),
                  (self.batch_size >= 1, "--batch-size must be >= 1"),
                  (self.grad_accum >= 1, "--grad-accum must be >= 1"),
                  (self.lr > 0, "--lr must be > 0"), (self.max_seq_len >= 16, "--max-seq-len must be >= 16"),
                  (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
                  (self.epochs > 0, "--epochs must be > 0"),
                  (self.eval_every >= 1 and self.save_every >= 1, "--eval-every and --save-every must be >= 1"),
                  (self.task in ("sft", "guard"), f"--task {self.task}: choose sft or guard"),
                  (self.guard_policy is None or self.task == "guard", "--guard-policy goes with --task guard"),
                  (self.guard_repeat_unsafe >= 1, "--guard-repeat-unsafe must be >= 1"),
                  (self.guard_repeat_unsafe == 1 or self.task == "guard",
                   "--guard-repeat-unsafe goes with --task guard")]
        for ok, msg in checks:
            if not ok:
                raise InvalidArgumentError(msg)
        if self.task == "guard":  # a bad policy file is reported before the model loads
            from corral.guard.taxonomy import load_taxonomy

            load_taxonomy(self.guard_policy)
