"""`DistillConfig`: a fine-tuning run's fields (it trains with the same loop) plus the teacher, the student and the
loss. The CLI's options, a YAML file's keys and the Python API's arguments. No torch import here."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.errors import InvalidArgumentError
from corral.train.config import FinetuneConfig


@dataclass
class DistillConfig(FinetuneConfig):
    # `model` is the teacher; the student is `student` or pruned from the teacher by the student_* fields
    out: str = "runs/distill"
    method: str = "full"  # full: every student weight trains; lora / qlora: a LoRA student on a frozen base
    lr: float = 5e-4
    epochs: float = 1.0
    batch_size: int = 4
    packing: bool = False
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    ema: float = 0.0  # the student's own weights are kept, as measured (README: Distill)
    compile: bool = False  # as measured (README: Distill); --compile turns it on
    student: str | None = None  # a model with the teacher's tokenizer; None: prune the teacher
    student_layers: int | None = None  # keep this many decoder layers (depth pruning)
    student_mlp: int | None = None  # MLP width (intermediate size) to keep (width pruning)
    student_heads: int | None = None  # query heads to keep per layer, a multiple of the KV heads (width pruning)
    prune_score: str = "kl"  # depth: kl (output change when the layer is removed) | bi (block influence)
    calib_examples: int = 32  # training examples that rank layers, channels and heads
    kd_loss: str = "fkl"  # fkl | rkl | jsd
    kd_alpha: float = 0.5  # loss = (1 - alpha) CE + alpha KD; 0 = plain SFT of the student
    kd_temperature: float = 1.0
    jsd_beta: float = 0.5
    teacher_topk: int = 0  # 0: teacher online at every step; k > 0: its top-k cached to disk once
    teacher_adapter: str | None = None  # a PEFT adapter merged into the teacher at load
    sft_baseline: bool = False  # also train the same initial student with CE alone (into out/sft) and report both
    report: bool = True  # after training, compare teacher and student(s) in report.json
    report_rows: int = 64  # held-out rows (the validation split, else the first training rows) for the report
    # corral eval tasks scored for every model in the report
    eval_tasks: list[str] = field(default_factory=list, metadata={"comma": True})
    # corral finetune's recipe stages are not distillation's: augment with `corral synth --augment` first
    augment: int = 0
    replay: float = 0.0
    select_every: int | None = 0

    def check(self) -> None:
        super().check()
        if self.augment or self.docs or self.replay or self.select_every:
            raise InvalidArgumentError("corral distill takes no --augment, --docs, --replay or --select-every; "
                                       "make the data first (corral synth --augment N) and pass it as --data")
        checks = [(self.kd_loss in ("fkl", "rkl", "jsd"), f"--kd-loss {self.kd_loss}: choose fkl, rkl or jsd"),
                  (0.0 <= self.kd_alpha <= 1.0, "--kd-alpha must be in [0, 1]"),
                  (self.kd_temperature > 0, "--kd-temperature must be > 0"),
                  (0.0 < self.jsd_beta < 1.0, "--jsd-beta must be in (0, 1)"),
                  (self.teacher_topk >= 0, "--teacher-topk must be >= 0 (0: online teacher)"),
                  (self.prune_score in ("kl", "bi"), f"--prune-score {self.prune_score}: choose kl or bi"),
                  (self.calib_examples >= 1, "--calib-examples must be >= 1"),
                  (self.student is None or not (self.student_layers or self.student_mlp or self.student_heads),
                   "give either --student (a model) or the --student-layers/--student-mlp/--student-heads pruning "
                   "options, not both"),
                  (self.student is not None or self.student_layers or self.student_mlp or self.student_heads,
                   "no student: give --student MODEL or prune the teacher with --student-layers N, --student-mlp N "
                   "or --student-heads N")]
        for ok, msg in checks:
            if not ok:
                raise InvalidArgumentError(msg)


HELP = {  # the CLI's help of the fields whose meaning differs from fine-tuning's
    "compile": "torch.compile each decoder layer: faster steps after a ~30 s first one (default off for distill)",
    "out": "run folder: student_init/, prune.json, metrics.jsonl, loss.png, checkpoint/, model/ or adapter/, "
           "report.json",
    "method": "full (every student weight trains) | lora | qlora (a LoRA student)",
    "student": "a student model with the teacher's tokenizer (instead of pruning the teacher)",
    "student_layers": "depth pruning: keep this many decoder layers", "student_mlp": "width pruning: MLP size to keep",
    "student_heads": "width pruning: query heads to keep (a multiple of the KV heads)",
    "prune_score": "how layers are ranked: kl (output change without the layer) | bi (block influence)",
    "calib_examples": "training examples used to rank layers, channels and heads",
    "kd_loss": "fkl (forward KL) | rkl (reverse KL) | jsd (generalised JSD, --jsd-beta)",
    "kd_alpha": "loss = (1 - alpha) CE + alpha KD; 0 = plain SFT of the student", "kd_temperature": "KD temperature",
    "jsd_beta": "JSD mixture weight of the teacher, in (0, 1)",
    "teacher_topk": "0: teacher online at every step; k: its top-k written to disk once and read back",
    "teacher_adapter": "a PEFT adapter merged into the teacher at load",
    "sft_baseline": "also train the same initial student with plain CE (out/sft) and compare it in report.json",
    "report": "after training, compare teacher and student(s) in report.json: parameters, size, decode speed, "
              "top-1 agreement, --eval-tasks (--no-report: a script that compares them itself)",
    "report_rows": "held-out rows for the report's teacher agreement (the validation split, else training rows)",
    "eval_tasks": "comma-separated corral eval tasks (bundled names or files) scored for every model in the report",
}
