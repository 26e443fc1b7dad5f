"""The options of `corral <verb>`, declared once: a dataclass per option group, a verb's config made of the groups it
needs. A config is the CLI (`corral.cli.options.add_options` turns its fields into flags), the YAML of `--config` and
the Python API (`corral.cli.serve.serve(ServeConfig(model="default", port=8001))`). No torch import here.

A field's metadata holds its help (`opt`); a verb that wants another default redeclares the field with the plain
value (its help is found on the group that declared it). `check()` validates what needs no file or model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidArgumentError


def yaml_mapping(path: Any, flag: str, what: str = "fields") -> dict[str, Any]:
    """A YAML file of a mapping (`--config`, `--hardware`, ...), or one clear error naming `flag` and the file."""
    from pathlib import Path

    import yaml

    p = path if hasattr(path, "read_text") else Path(path)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise InvalidArgumentError(f"{flag} {path}: {'no such file' if isinstance(e, FileNotFoundError) else e}"
                                   ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidArgumentError(f"{flag} {path}: not valid YAML{where} "
                                   f"({getattr(e, 'problem', None) or 'cannot parse'})") from None
    if not isinstance(loaded, dict):
        raise InvalidArgumentError(f"{flag} {path}: expected a mapping of {what}")
    return loaded


def opt(default: Any, help: str, **cli: Any) -> Any:
    """A field with its help text; `cli` is handed to argparse (metavar, choices, nargs) or says `positional=True`
    / `comma=True` (a list given as one comma-separated value)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


def at_least(*checks: tuple[str, float | None, float]) -> None:
    """Raise for the first (flag, value, lowest) whose value is below its lowest (None: not given, fine)."""
    for flag, value, lo in checks:
        if value is not None and value < lo:
            raise InvalidArgumentError(f"{flag} must be >= {lo}")


def probability(flag: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{flag} {value}: expected a probability in [0, 1]")


# --- option groups -------------------------------------------------------------------------------------------------


@dataclass
class Options:
    """The base of every group: `check()` runs every group's checks (each calls `super().check()`)."""

    def check(self) -> None:
        pass


@dataclass
class ModelPath(Options):
    model: str | None = opt(None, "GGUF file, HF folder, registry name or LoRA adapter folder (default: the "
                                  "built-in model)", positional=True)
    adapter: str | None = opt(None, "a PEFT LoRA adapter folder to merge into the model at load")


@dataclass
class DtypeOptions(Options):
    dtype: str = opt("auto", "auto | int4 | float32 | bfloat16 | float16 (auto: Q4 GGUFs run 4-bit packed; otherwise "
                             "bf16 on CUDA, fp32 on CPU)")


@dataclass
class RunOptions(DtypeOptions):
    device: str = opt("auto", "auto | cpu | cuda[:N]")
    threads: int | None = opt(None, "CPU threads (default: torch's choice)")
    chat_template: str | None = opt(None, "a Jinja chat template file to use instead of the model's")

    def check(self) -> None:
        super().check()
        at_least(("--threads", self.threads, 1))


@dataclass
class ModelOptions(ModelPath, RunOptions):
    max_seq_len: int = opt(4096, "context of one sequence in tokens (prompt and answer; the KV cache's length)")

    def check(self) -> None:
        super().check()
        at_least(("--max-seq-len", self.max_seq_len, 16))


@dataclass
class SpeedOptions(Options):
    draft_model: str | None = opt(None, "speculative decoding: a smaller model with the same tokenizer (e.g. a "
                                        "`corral distill` student) drafts tokens that this model verifies; greedy "
                                        "output is unchanged and sampling keeps this model's distribution",
                                  metavar="DRAFT")
    draft_tokens: int = opt(4, "tokens the draft proposes per verify round (1 to 7)", metavar="K")
    compile: bool = opt(False, "torch.compile the decode step: faster decoding after a compile of 15 s (one "
                               "stream) to a few minutes (the batched server)")


@dataclass
class BatchOptions(Options):
    max_batch: int = opt(16, "sequences decoded together (KV slots)")

    def check(self) -> None:
        super().check()
        at_least(("--max-batch", self.max_batch, 1))


@dataclass
class EngineOptions(BatchOptions):
    kv_cache_tokens: int | None = opt(None, "KV cache budget in tokens, allocated as requests need it: slots = "
                                            "budget // --max-seq-len (default --max-batch x --max-seq-len)")
    kv_dtype: str = opt("auto", "KV cache dtype; auto: float16 for 4-bit models on CPU, else the model's dtype; "
                                "q8_0: int8 with a scale per 32 numbers, about half of float16's memory",
                        choices=["auto", "float32", "float16", "bfloat16", "q8_0"])
    max_queue: int = opt(256, "waiting requests before 503")
    prefill_chunk: int = opt(128, "prompt tokens prefilled per step")

    def check(self) -> None:
        super().check()
        at_least(("--max-queue", self.max_queue, 1), ("--prefill-chunk", self.prefill_chunk, 16))


@dataclass
class LengthOptions(Options):
    max_tokens: int = opt(256, "longest answer in tokens")

    def check(self) -> None:
        super().check()
        at_least(("--max-tokens", self.max_tokens, 1))


@dataclass
class SamplingOptions(LengthOptions):
    temperature: float = opt(0.0, "0 = greedy")
    top_k: int = opt(0, "keep the k most likely tokens (0: all)")
    top_p: float = opt(1.0, "nucleus sampling: keep the most likely tokens up to this probability mass")
    min_p: float = opt(0.0, "drop tokens less likely than this share of the most likely one")
    repeat_penalty: float = opt(1.0, "divide the logits of tokens already seen by this (1: off)")
    seed: int | None = opt(None, "sampling seed (default: a fresh one)")
    stop: list[str] = opt([], "stop string (repeatable)", action="append")
    system: str | None = opt(None, "a system message put before the prompt")

    def sampling(self) -> Any:
        from corral.engine.sampling import SamplingParams

        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              repetition_penalty=self.repeat_penalty, max_tokens=self.max_tokens,
                              stop=list(self.stop), seed=self.seed)


@dataclass
class ChatFlag(Options):
    chat: bool = opt(False, "render the text as a user message with the model's chat template")


@dataclass
class DataOptions(Options):
    data: str | None = opt(None, "your chat or prompt/completion JSONL (synth: with --augment, the rows to reword; "
                                 "audit: the rows the model was trained on)")


@dataclass
class ScoreOptions(Options):
    batch_tokens: int = opt(2048, "padded tokens per log-likelihood batch")


@dataclass
class HardwareOptions(Options):
    hardware: str | None = opt(None, "YAML: the machine's price, write-off years, utilization, watts, electricity "
                                     "price (default: corral/data/hardware.yaml; copy and edit it)", metavar="FILE")


@dataclass
class OutOptions(Options):
    out: str | None = opt(None, "where the results go (see the description above)")


@dataclass
class KeyOptions(Options):
    api_key: list[str] = opt([], "API key: serve accepts each one given (repeatable; also CORRAL_API_KEYS, "
                                 "comma-separated); redteam sends the first to --endpoint (default OPENAI_API_KEY)",
                             action="append")


@dataclass
class LimitOptions(Options):
    limit: int | None = opt(None, "only the first N examples of each task (redteam: N attacks and N benign prompts, "
                                  "spread over the categories)", metavar="N")


@dataclass
class ShieldOptions(Options):
    """A guard model in front of (input) and behind (output) the served model; POST /v1/moderations answers with it."""

    guard: str | None = opt(None, "a guard model (Llama Guard style verdicts; GGUF, HF folder or registry name)",
                            metavar="GUARD_MODEL")
    guard_adapter: str | None = opt(None, "a LoRA adapter merged into the guard", metavar="DIR")
    guard_policy: str | None = opt(None, "the guard's categories (default: Llama Guard 3's S1-S14)",
                                   metavar="POLICY.yaml")
    guard_mode: str = opt("score", "score: P(unsafe) from one forward pass; generate: the guard writes its verdict",
                          choices=["score", "generate"])
    guard_threshold: float = opt(0.5, "score mode: block when P(unsafe) >= this")
    shield: str = opt("input,output", "which shields the guard runs: input, output or input,output")
    shield_action: str = opt("refuse", "a blocked request or answer gets a refusal with finish_reason "
                                       "content_filter (refuse) or an HTTP 400 / stream error event with code "
                                       "content_filter (error)", choices=["refuse", "error"])
    shield_stream_tokens: int = opt(32, "output shield on streams: hold text back and release it after a check "
                                        "every N tokens (and at the end); 0 checks once at the end", metavar="N")
    injection_shield: bool = opt(False, "block prompt injections and jailbreaks in user and tool messages (a small "
                                        "bundled classifier; no guard model needed)")

    def shields(self) -> tuple[bool, bool]:
        """Checked shield options: the guard's (input, output) shields."""
        from corral.guard.shields import parse_shields

        inp, out = parse_shields(self.shield)
        if self.guard is None:
            for flag, given in (("--guard-adapter", self.guard_adapter), ("--guard-policy", self.guard_policy),
                                ("--shield", self.shield != "input,output")):
                if given:
                    raise InvalidArgumentError(f"{flag} needs --guard GUARD_MODEL")
        probability("--guard-threshold", self.guard_threshold)
        at_least(("--shield-stream-tokens", self.shield_stream_tokens, 0))
        return inp, out
