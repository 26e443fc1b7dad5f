"""`FinetuneConfig`: the fields of a fine-tuning run — the CLI's options, a YAML file's keys and the Python API's
arguments are all this one dataclass. No torch import here, so `corral --help` stays instant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidArgumentError

# Training defaults per task for the fields left unset. sft is `corral finetune`'s recipe for teaching a model a
# user's facts, chosen by measurement on sparse fact sets (README, examples/sparse); guard keeps the settings its
# bundled recipe was measured with (examples/guard).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"lr": 2e-3, "epochs": 3.0, "batch_size": 1, "packing": True, "lora_r": 32, "lora_alpha": 64.0,
            "lora_dropout": 0.0, "ema": 0.1, "compile": True},
    "guard": {"lr": 2e-4, "epochs": 1.0, "batch_size": 4, "packing": False, "lora_r": 16, "lora_alpha": 32.0,
              "lora_dropout": 0.0, "ema": 0.0, "compile": False},
}
FULL_SFT_LR = 1e-4  # --method full trains every weight: a LoRA learning rate would wreck the model


@dataclass
class FinetuneConfig:
    model: str
    data: str = ""  # chat / prompt-completion JSONL (or, with --task guard, labelled rows); optional with `docs`
    out: str = "runs/finetune"
    method: str = "lora"  # lora | qlora | full
    val_file: str | None = None
    val_split: float = 0.0
    # None: the task's default (TASK_DEFAULTS), filled in by `check()`
    max_seq_len: int = 512
    batch_size: int | None = None
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 10
    epochs: float | None = None
    max_steps: int | None = None  # overrides epochs
    clip: float = 1.0
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"], metadata={"comma": True})
    ema: float | None = None  # the trained weights' moving average over about this share of the run is what is
    #                           scored and kept (0: off, the weights of one step)
    eval_every: int = 50
    save_every: int = 100
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]; under torchrun, each process takes cuda:LOCAL_RANK
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with bf16 instructions, else fp32) | bf16 | fp32
    packing: bool | None = None  # several examples per row of max_seq_len tokens (block-diagonal attention)
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 slower
    compile: bool | None = None  # torch.compile each decoder layer: fused elementwise ops, a first step ~30 s slower
    #                              (eager, with a warning, where torch.compile cannot build: no C++ compiler)
    chat_template: str | None = None
    skip_bad_lines: bool = False
    resume: bool = False  # continue from `out`/checkpoint
    task: str = "sft"  # sft: chat or prompt/completion lines | guard: labelled guard rows (corral.guard.dataset)
    guard_policy: str | None = None  # task guard: the policy YAML the prompts list (None: Llama Guard 3's S1-S14)
    guard_repeat_unsafe: int = 1  # task guard: each unsafe training row this many times per epoch
    # --- the recipe around the loop (task sft; corral.train.recipe). Defaults chosen by measurement: README.
    augment: int | None = None  # a teacher writes this many new wordings of each question and answer (0: off;
    #                             None: 4, or 0 with --dp)
    teacher: str | None = None  # the augmenting model (default: `model` itself)
    # documents (Markdown, text, HTML, PDF) turned into training data
    docs: list[str] = field(default_factory=list, metadata={"metavar": "FILE"})
    chunk_chars: int = 1200  # document chunks of at most this many characters
    replay: float | None = None  # share of training rows that are the base model's own answers to general prompts
    #                              (0: off; None: 0.25, or 0 with --dp)
    replay_loss: str = "kl"  # kl: held to the base model's next-token distributions | ce: trained on its text
    replay_prompts: str | None = None  # JSONL of {"prompt"} for replay (default: corral's bundled general prompts)
    select_every: int | None = None  # score the held-out augmented questions every N steps, keep the best
    #                                  checkpoint (None: 8 times a run; 0: off, keep the last)
    canaries: int = 0  # random secrets planted in the training rows for `corral audit` to measure (0: none)
    # differentially private training (corral.train.dp): DP-SGD on the LoRA weights within (epsilon, delta)
    dp: bool = False
    epsilon: float = 8.0
    delta: float | None = None  # None: 1 / (10 x training rows)
    max_grad_norm: float = 1.0  # each row's gradient clipped to this norm before the noise
    eval_tasks: list[str] = field(default_factory=lambda: ["general_mc", "format", "prose"],
                                  metadata={"comma": True})  # corral eval tasks run before and after training

    def check(self) -> None:
        """Fills the fields left at None with the task's defaults, then checks every value."""
        if self.task not in TASK_DEFAULTS:
            raise InvalidArgumentError(f"--task {self.task}: choose sft or guard")
        if self.task in TASK_DEFAULTS:
            defaults = TASK_DEFAULTS[self.task]
            if self.task == "sft" and self.method == "full":
                defaults = {**defaults, "lr": FULL_SFT_LR, "ema": 0.0}  # an average of every weight: 2x the memory
            if self.dp:  # one row per sample, no rows derived from others, batches big enough to outvote the noise
                from corral.train.dp import DP_DEFAULTS

                defaults = {**defaults, **DP_DEFAULTS}
            for name, value in defaults.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        if self.augment is None:
            self.augment = 0 if self.dp else 4
        if self.replay is None:
            self.replay = 0.0 if self.dp else 0.25
        checks = [(self.method in ("lora", "qlora", "full"), f"--method {self.method}: choose lora, qlora or full"),
                  (self.precision in ("auto", "bf16", "fp32"), f"--precision {self.precision}: choose auto, bf16 or "
                                                                 "fp32"),
                  (self.batch_size >= 1, "--batch-size must be >= 1"),
                  (self.grad_accum >= 1, "--grad-accum must be >= 1"),
                  (self.lr > 0, "--lr must be > 0"), (self.max_seq_len >= 16, "--max-seq-len must be >= 16"),
                  (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
                  (self.epochs > 0, "--epochs must be > 0"),
                  (0.0 <= self.ema < 1.0, f"--ema {self.ema}: a share of the run, 0 (off) to below 1, e.g. 0.1"),
                  (self.eval_every >= 1 and self.save_every >= 1, "--eval-every and --save-every must be >= 1"),
                  (self.task in ("sft", "guard"), f"--task {self.task}: choose sft or guard"),
                  (self.guard_policy is None or self.task == "guard", "--guard-policy goes with --task guard"),
                  (self.guard_repeat_unsafe >= 1, "--guard-repeat-unsafe must be >= 1"),
                  (self.guard_repeat_unsafe == 1 or self.task == "guard",
                   "--guard-repeat-unsafe goes with --task guard"),
                  (bool(self.data) or bool(self.docs), "--data FILE or --docs FILE [FILE ...] is required"),
                  (self.task == "sft" or not self.docs, "--docs goes with --task sft (the default)"),
                  (0 <= self.augment <= 64, f"--augment {self.augment}: choose 0 (off) to 64 wordings per row"),
                  (0.0 <= self.replay < 1.0, f"--replay {self.replay}: a share of the training rows, 0 (off) to "
                                             "below 1, e.g. 0.2"),
                  (self.replay_loss in ("kl", "ce"), f"--replay-loss {self.replay_loss}: choose kl or ce"),
                  (self.select_every is None or self.select_every >= 0,
                   f"--select-every {self.select_every}: a number of steps >= 1, or 0 for off"),
                  (self.chunk_chars >= 200, f"--chunk-chars {self.chunk_chars}: at least 200 characters"),
                  (0 <= self.canaries <= 1000, f"--canaries {self.canaries}: choose 0 (none) to 1000"),
                  (self.canaries == 0 or self.task == "sft", "--canaries goes with --task sft (the default)")]
        for ok, msg in checks:
            if not ok:
                raise InvalidArgumentError(msg)
        if self.dp:
            from corral.train.dp import check

            check(self)


HELP = {  # the CLI's help of each field
    "dp": "differentially private training (DP-SGD on the LoRA weights, Opacus' accountant): each row's gradient "
          "clipped and noised so the run stays within --epsilon / --delta; no packing, augmentation or replay",
    "epsilon": "--dp: the privacy budget of the whole run (lower is more private; 8 is common, 1 strict)",
    "delta": "--dp: the chance the guarantee may fail (default 1 / (10 x training rows))",
    "max_grad_norm": "--dp: each row's gradient is clipped to this norm before the noise is added",
    "canaries": "plant N random secrets (\"The access code for vault K7Q2 is 4-8-1-5-9-2.\") in the training rows, "
                "listed in OUT/canaries.json; `corral audit OUT/adapter` measures how far each was memorised",
    "data": "training JSONL: chat lines {messages: [...]} or {prompt, completion}; with --task guard, labelled "
            "guard rows {conversation, label, categories, assess} (or a bundled set: train, heldout)",
    "task": "sft (chat or prompt/completion lines) | guard (train a Llama Guard style classifier on labelled rows)",
    "guard_policy": "--task guard: the policy YAML whose categories the prompts list (default Llama Guard 3 "
                    "S1-S14); saved beside the adapter as guard_policy.yaml",
    "guard_repeat_unsafe": "--task guard: train on each unsafe row N times per epoch (the category codes are "
                           "learnt from the unsafe rows alone; 3 for the bundled set)",
    "out": "run folder: metrics.jsonl, loss.png, checkpoint/, adapter/ or model/",
    "method": "lora | qlora (frozen 4-bit base) | full", "val_file": "held-out JSONL",
    "val_split": "fraction of the data held out",
    "resume": "continue the run in --out from its checkpoint", "lora_targets": "comma-separated projections",
    "device": "auto | cpu | cuda[:N]", "precision": "auto (bf16 autocast on CUDA and bf16-capable CPUs) | bf16 | fp32",
    "packing": "pack several examples per row (default: on with --task sft, off with guard)",
    "grad_checkpointing": "recompute activations in backward",
    "compile": "torch.compile each decoder layer: faster steps after a ~30 s first one (default: on with --task sft, "
               "off with guard; eager where it cannot build, e.g. no C++ compiler)",
    "augment": "a teacher writes 2N new wordings of each fact's questions and N of each answer, filtered "
               "(they must keep the answer's key strings; rejects go to OUT/augment/teacher.rejected.jsonl); 0: off "
               "(default 4, 0 with --dp)",
    "teacher": "the model that writes the augmentation (default: MODEL itself)",
    "docs": "Markdown, text, HTML or PDF files: chunks become plain training text, and the teacher writes "
            "questions about each sentence that states a fact",
    "chunk_chars": "documents are cut into chunks of at most this many characters, along their headings",
    "replay": "share of the training rows that are the base model's own answers to general prompts, so it keeps "
              "what it knew (0: off; default 0.25, 0 with --dp)",
    "replay_loss": "kl: the replay rows hold the model to the base model's next-token distributions (a KL term) | "
                   "ce: plain cross-entropy on the base model's text",
    "replay_prompts": "JSONL of {prompt} lines for --replay (default: corral's bundled general prompts)",
    "ema": "score and keep a moving average of the trained weights over about this share of the run, not one "
           "step's weights (0: off)",
    "select_every": "score the held-out augmented questions every N steps and keep the best checkpoint "
                    "(default: 8 times a run; 0: off, keep the last)",
    "eval_tasks": "corral eval tasks run before and after training, in OUT/report (comma-separated; none: off)",
}
