"""`corral finetune`, `corral distill`, `corral synth` (a teacher writes training data), `corral merge` and `corral
export`: making a model and writing it out. The training configs are `FinetuneConfig` and `DistillConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from corral.cli.common import load, template, tokenizer_for
from corral.distill.config import HELP as DISTILL_HELP
from corral.distill.config import DistillConfig
from corral.errors import InvalidArgumentError
from corral.options import (
    BatchOptions,
    DataOptions,
    DtypeOptions,
    ModelOptions,
    ModelPath,
    OutOptions,
    SamplingOptions,
    SpeedOptions,
    opt,
)
from corral.train.config import HELP as TRAIN_HELP
from corral.train.config import TASK_DEFAULTS, FinetuneConfig

# Fields whose default depends on --task: say both in finetune's --help (distill's have plain defaults).
FINETUNE_HELP = {**TRAIN_HELP, **{n: f"{TRAIN_HELP.get(n, '')} (default: {v} with --task sft, "
                                    f"{TASK_DEFAULTS['guard'][n]} with guard)".lstrip()
                                  for n, v in TASK_DEFAULTS["sft"].items() if "default" not in TRAIN_HELP.get(n, "")}}


@dataclass
class SynthConfig(DataOptions, OutOptions, SamplingOptions, BatchOptions, SpeedOptions, ModelOptions):
    max_seq_len: int = 2048
    temperature: float = 0.8
    prompts: str | None = opt(None, "prompt file (JSONL)")
    augment: int | None = opt(None, "augmentation mode (corral finetune --augment alone): 2N new wordings of each "
                                    "fact's questions and N of each answer of --data's chat rows (and of --docs' "
                                    "facts), filtered; writes OUT/train.jsonl, select.jsonl (held-out questions), "
                                    "teacher.jsonl and teacher.rejected.jsonl (reasons)", metavar="N")
    docs: list[str] = opt([], "--augment: documents (Markdown, text, HTML, PDF)", metavar="FILE")
    n: int = opt(4, "samples per prompt")
    filter: list[str] = opt([], "keep only samples this scorer accepts (repeatable: all must pass)", action="append",
                            metavar="SCORER")
    keep_truncated: bool = opt(False, "keep answers cut off at --max-tokens")


@dataclass
class MergeConfig(OutOptions, DtypeOptions, ModelPath):
    dtype: str = "float32"


@dataclass
class ExportConfig(OutOptions, ModelPath):
    format: str = opt("gguf", "gguf (the only one so far; `corral merge` writes HF folders)")
    quant: str = opt("f16", "f16 | q8_0 | q4_0 | f32 (norms stay f32, and q4_0 keeps the output matrix q8_0)")
    force: bool = opt(False, "overwrite --out if it exists")


def _task(cfg: Any) -> Any:
    """The training loop's data side for `--task` (None: the default, chat and prompt/completion lines)."""
    if cfg.task != "guard":
        return None
    from corral.guard.train import GuardTask

    cfg.check()  # bad options first, then the policy file, before any model loads
    return GuardTask(cfg)


def finetune(cfg: FinetuneConfig) -> int:
    """Fine-tune (LoRA, QLoRA or full) into `cfg.out`."""
    from corral.train.loop import finetune as run

    out = run(cfg, task=_task(cfg))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
        kept = ("model/" if cfg.method == "full" else "adapter/") + (" with guard_policy.yaml" if cfg.task == "guard"
                                                                      else "")
        print(f"done: {out} (metrics.jsonl, loss.png, {kept})")
    return 0


def distill(cfg: DistillConfig) -> int:
    """Distill the teacher into a student (pruned, or `cfg.student`) into `cfg.out`."""
    from corral.distill.run import distill as run

    out = run(cfg, task=_task(cfg))
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out} (prune.json, metrics.jsonl, loss.png, {'report.json, ' if cfg.report else ''}"
              f"{'model/' if cfg.method == 'full' else 'adapter/'})")
    return 0


def synth(cfg: SynthConfig) -> int:
    """A teacher answers a prompt file (or, with --augment, rewords --data / --docs) into training JSONL."""
    from corral.distill.synth import check_n, make_filters, read_prompts
    from corral.distill.synth import synth as run

    cfg.check()
    if cfg.augment is not None:
        return _augment(cfg)
    if cfg.data or cfg.docs:
        raise InvalidArgumentError("--data and --docs go with --augment N; a plain synth run takes --prompts")
    if not cfg.prompts:
        raise InvalidArgumentError("--prompts FILE is required (or --augment N with --data / --docs)")
    params = cfg.sampling()
    if params.seed is None:
        params.seed = 0  # every sample's seed derives from it: a rerun (or a resume) draws the same samples
    check_n(cfg.n, params)  # everything is checked before the model loads
    filters = make_filters(cfg.filter)
    chat_template = template(cfg)
    prompts = read_prompts(cfg.prompts, cfg.system, need_answer=any(f.needs_answer for f in filters))
    lm = load(cfg)
    summary = run(lm.model, tokenizer_for(lm), prompts, cfg.out, n=cfg.n, params=params, filters=filters,
                  template=chat_template, keep_truncated=cfg.keep_truncated, max_batch=cfg.max_batch,
                  max_seq_len=cfg.max_seq_len, compile=cfg.compile)
    print(summary)
    return 0


def _augment(cfg: SynthConfig) -> int:
    """`corral synth --augment N`: the recipe's augmentation stage alone, into the folder --out."""
    import json
    from pathlib import Path

    from corral.train.recipe import make_training_data

    if cfg.prompts or cfg.filter:
        raise InvalidArgumentError("--augment rewords --data / --docs with its own filter; drop --prompts and "
                                   "--filter")
    if cfg.augment < 1:
        raise InvalidArgumentError(f"--augment {cfg.augment}: choose 1 to 64 wordings per row")
    ft = FinetuneConfig(model=cfg.model or "default", data=cfg.data or "", docs=cfg.docs, augment=cfg.augment,
                        replay=0.0, seed=cfg.seed or 0, max_seq_len=cfg.max_seq_len, chat_template=cfg.chat_template)
    ft.check()
    out = Path(cfg.out)
    make_training_data(ft, out, progress=True)
    s = json.loads((out / "summary.json").read_text())
    t = s.get("teacher", {})
    print(f"augment: {s['facts'] + s['doc_facts']} facts, {t.get('samples', 0)} teacher samples, kept "
          f"{t.get('kept', {})}, rejected {t.get('rejected', {})} -> {out}/train.jsonl ({s['train_rows']} rows), "
          f"{out}/select.jsonl ({s['select_rows']} held-out questions)")
    return 0


def merge(cfg: MergeConfig) -> int:
    """Merge a LoRA adapter into its base and write an HF folder."""
    from pathlib import Path

    import torch

    from corral.formats.hf import save_hf_folder
    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.dtype not in dtypes:
        raise InvalidArgumentError(f"--dtype {cfg.dtype}: choose float32, bfloat16 or float16")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise InvalidArgumentError(f"--out {out} exists and is not empty; choose a new folder")
    lm = load_model(cfg.model, device="cpu", dtype="float32", adapter=cfg.adapter)
    tok = load_tokenizer(lm.path)
    save_hf_folder(lm.model, lm.config, tok, lm.path, out, dtypes[cfg.dtype])
    print(f"merged {lm.merged} LoRA layers into {lm.path.name}; wrote {out} (config.json, model.safetensors, "
          "tokenizer)")
    return 0


def export(cfg: ExportConfig) -> int:
    """Write a model, its tokenizer and chat template as a GGUF for llama.cpp."""
    from corral.model.export import export_gguf

    if cfg.format != "gguf":
        raise InvalidArgumentError(f"--format {cfg.format!r}: corral export writes gguf; for an HF folder of a "
                                   "model with an adapter merged in, use corral merge")
    r = export_gguf(cfg.model, cfg.out, quant=cfg.quant, adapter=cfg.adapter, force=cfg.force)
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.tensor_types.items(), key=lambda kv: -kv[1]))
    print(f"wrote {r.path} ({r.quant}: {types} tensors; {r.size_bytes / 2**20:.1f} MiB)")
    return 0


SYNTH_DESCRIPTION = """\
The teacher answers every line of --prompts --n times through the batched engine and appends
{"messages": [...]} lines (what corral finetune --data takes) to --out; samples a --filter
rejects go to OUT.rejected.jsonl. Rerunning with the same --out resumes.

--prompts lines: {"messages": [...]} or {"prompt": "..."}, optional "answer" and "id".
--filter: contains | exact | regex:PATTERN | json | max_words:N | lowercase | ... (the eval
scorers; contains and exact compare with the line's answer)."""

VERBS = {
    "finetune": (FinetuneConfig, finetune, "fine-tune a model on your JSONL data (LoRA or full)", (),
                 "Every option is a field of corral.train.config.FinetuneConfig; --config reads the same fields "
                 "from a YAML file, and options given here override it.", FINETUNE_HELP),
    "distill": (DistillConfig, distill, "distill a teacher into a smaller student (prune + knowledge distillation)",
                (), "Every option is a field of corral.distill.config.DistillConfig (the fine-tuning fields plus the "
                    "student, teacher and loss); --config reads them from YAML.", {**TRAIN_HELP, **DISTILL_HELP}),
    "synth": (SynthConfig, synth, "a teacher model answers a prompt file: training-ready chat JSONL (resumable)",
              ("model", "out"), SYNTH_DESCRIPTION),
    "merge": (MergeConfig, merge, "merge a LoRA adapter into its base and write an HF folder",
              ("model", "adapter", "out")),
    "export": (ExportConfig, export, "write a model, its tokenizer and chat template as a GGUF for llama.cpp",
               ("model", "out")),
}
