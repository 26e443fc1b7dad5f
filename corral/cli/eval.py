"""`corral eval`: score models on tasks (bundled, or your own YAML/JSONL) and compare them in one report;
`corral audit`: what a fine-tune memorised of its data; `corral cost`: what owning the model costs."""

from __future__ import annotations

from dataclasses import dataclass

from corral.cli.common import template
from corral.errors import InvalidArgumentError
from corral.options import (
    BatchOptions,
    DataOptions,
    HardwareOptions,
    LengthOptions,
    LimitOptions,
    ModelPath,
    OutOptions,
    RunOptions,
    ScoreOptions,
    at_least,
    opt,
)


@dataclass
class EvalConfig(ScoreOptions, LimitOptions, OutOptions, BatchOptions, RunOptions):
    models: list[str] = opt([], "GGUF file, HF folder, registry name or adapter folder", positional=True,
                            metavar="MODEL")
    out: str = "runs/eval"
    tasks: list[str] | None = opt(None, "comma-separated task names or files (default: every bundled task)", comma=True)
    list_tasks: bool = opt(False, "list the bundled tasks and exit")


def evaluate(cfg: EvalConfig) -> int:
    """Score each model on each task; print a table and write the report into `out`."""
    import torch
    from rich.console import Console

    from corral.eval import bundled_tasks, load_task
    from corral.eval import evaluate as run
    from corral.eval.report import print_table

    if cfg.list_tasks:
        for name in bundled_tasks():
            t = load_task(name)
            print(f"{name:<12} {t.kind:<16} {len(t.examples):>4} examples  {t.description}")
        return 0
    if not cfg.models:
        raise InvalidArgumentError("name at least one MODEL to evaluate (or pass --list-tasks)")
    cfg.check()
    if cfg.tasks is not None and not cfg.tasks:
        raise InvalidArgumentError("--tasks names no task")
    tasks = cfg.tasks if cfg.tasks is not None else bundled_tasks()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    report = run(cfg.models, tasks, limit=cfg.limit, out=cfg.out, device=cfg.device, dtype=cfg.dtype,
                 batch_tokens=cfg.batch_tokens, max_batch=cfg.max_batch, template=template(cfg))
    print_table(report, Console(width=max(100, Console().width)))
    print(f"wrote {cfg.out}/report.json, samples.jsonl, report.png, report.html")
    return 0


DESCRIPTION = """\
Score each MODEL on each task; print a table, write report.json, samples.jsonl, report.png and report.html into --out.

A task is a bundled name (corral eval --list-tasks) or a task file: a YAML (kind, data, prompt,
score; see corral/eval/task.py) or a bare JSONL. A MODEL may be a LoRA adapter folder (corral
finetune's RUN/adapter): its base model is loaded with the adapter merged in."""

@dataclass
class AuditConfig(ScoreOptions, DataOptions, OutOptions, RunOptions, ModelPath):
    heldout: str | None = opt(None, "rows of the same kind it was not trained on: membership inference needs them")
    reference: str | None = opt(None, "the reference model for membership scores (default: the adapter's base; "
                                      "none for a model that is not an adapter)")
    canaries: str | None = opt(None, "the canaries.json of a `corral finetune --canaries N` run (default: the "
                                     "adapter's run folder's)")
    candidates: int = opt(999, "random secrets each canary is ranked against")
    extract_rows: int = opt(64, "training rows tried for verbatim extraction")
    pii_prompts: str | None = opt(None, "an attack JSONL of PII-probing prompts (default: the red-team suite's PII "
                                        "and privacy attacks)", metavar="FILE")
    no_pii: bool = opt(False, "skip the PII probes")
    out: str = "runs/audit"


def _load(model: str | None, adapter: str | None, device: str, dtype: str):
    """The model (with `adapter` merged, when given) and its tokenizer, as `corral eval` loads them."""
    from corral.eval.harness import EvalModel, load_eval_model

    if adapter is None:
        return load_eval_model(model, device, dtype)
    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    return EvalModel(f"{model}+{adapter}", lm.model, load_tokenizer(lm.path), str(lm.path))


def run_audit(cfg: AuditConfig) -> int:
    """Membership inference, verbatim extraction and canary exposure; a summary, and the report in `out`."""
    import json
    from pathlib import Path

    import torch

    from corral.audit import audit, find_canaries, pii_prompts, print_summary, write_report
    from corral.model.loader import adapter_base, is_adapter

    if not cfg.model or not cfg.data:
        raise InvalidArgumentError("corral audit MODEL --data TRAIN.jsonl [--heldout FILE]: name the model and "
                                   "the data it was trained on")
    at_least(("--candidates", cfg.candidates, 1), ("--extract-rows", cfg.extract_rows, 0))
    for flag, path in (("--data", cfg.data), ("--heldout", cfg.heldout)):
        if path and not Path(path).is_file():
            raise InvalidArgumentError(f"{flag} {path}: no such file; pass a JSONL file of chat or "
                                       "prompt/completion lines")
    canaries_path = find_canaries(cfg.adapter or cfg.model, cfg.canaries)
    canaries = json.loads(canaries_path.read_text())["canaries"] if canaries_path else []
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # fp32 for both: an adapter merges into fp32, and a reference in another precision would add its own loss gap
    dtype = "float32" if cfg.dtype == "auto" else cfg.dtype
    em = _load(cfg.model, cfg.adapter, cfg.device, dtype)
    adapter = cfg.adapter or (cfg.model if is_adapter(Path(cfg.model)) else None)
    ref_name = cfg.reference or (cfg.model if cfg.adapter else adapter_base(adapter) if adapter else None)
    ref = _load(ref_name, None, cfg.device, dtype) if ref_name else None
    if ref is not None and ref.tok.vocab_size != em.tok.vocab_size:
        raise InvalidArgumentError(f"--reference {ref_name}: its tokenizer is not the model's")
    probes = [] if cfg.no_pii else pii_prompts(cfg.pii_prompts)
    report, samples = audit(em.model, em.tok, cfg.data, cfg.heldout, ref.model if ref else None, canaries,
                            template=template(cfg), extract_rows=cfg.extract_rows, candidates=cfg.candidates,
                            batch_tokens=cfg.batch_tokens, probes=probes,
                            progress=lambda msg: print(f"audit: {msg}", flush=True))
    report.update(model=cfg.model, reference=ref_name, canaries_file=str(canaries_path) if canaries_path else None)
    print_summary(report)
    write_report(report, samples, cfg.out)
    print(f"wrote {cfg.out}/report.json, samples.jsonl, report.png, report.html")
    return 0


AUDIT_DESCRIPTION = """\
What a fine-tuned model memorised of its training data: membership inference (loss- and reference-based scores,
AUC and TPR at 1% FPR, training rows vs --heldout rows), verbatim extraction (greedy decoding from each row's first
half) and canary exposure (`corral finetune --canaries N`; Carlini et al., "The Secret Sharer"). Writes
report.json, samples.jsonl, report.png and report.html into --out."""

@dataclass
class CostConfig(HardwareOptions, OutOptions, LengthOptions, BatchOptions, RunOptions, ModelPath):
    prices: str | None = opt(None, "YAML of closed-API list prices per 1M tokens (default: corral's dated table)",
                             metavar="FILE")
    tokens_per_s: float | None = opt(None, "output tokens/s measured elsewhere (e.g. bench/serve_load.py) "
                                           "instead of timing MODEL here")
    finetune: list[str] = opt([], "corral finetune runs to cost, from their own timings", metavar="RUN", nargs="+")
    requests: int = opt(32, "chat requests timed (corral's bundled general prompts)")
    max_tokens: int = 128
    out: str = "runs/cost"


def run_cost(cfg: CostConfig) -> int:
    """$ and kWh per 1M tokens served and per fine-tune run on this hardware, next to closed-API list prices."""
    import json
    from pathlib import Path

    import torch

    from corral.cost import EnergyMeter, Hardware, api_prices, costs, finetune_run, measure_serving

    cfg.check()
    at_least(("--requests", cfg.requests, 1))
    hw, prices = Hardware.load(cfg.hardware), api_prices(cfg.prices)
    runs = [finetune_run(r) for r in cfg.finetune]  # a bad folder fails before any timing
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    meter = EnergyMeter(hw.watts)
    if cfg.tokens_per_s is not None:
        if cfg.tokens_per_s <= 0:
            raise InvalidArgumentError(f"--tokens-per-s {cfg.tokens_per_s}: a throughput > 0")
        served = {"output_tokens_per_s": cfg.tokens_per_s, "source": "--tokens-per-s", "energy_source": "declared"}
        mix = 0.0
    else:
        em = _load(cfg.model, cfg.adapter, cfg.device, cfg.dtype)
        print(f"timing {cfg.requests} chat requests x up to {cfg.max_tokens} tokens on {em.name}, "
              f"{cfg.max_batch} at a time...", flush=True)
        served = measure_serving(em.model, em.tok, meter, cfg.requests, cfg.max_tokens, cfg.max_batch)
        served["source"] = f"timed here: {cfg.model or 'default'}"
        mix = served["prompt_tokens"] / max(1, served["output_tokens"])
    jpt = served.get("joules_per_output_token") if served["energy_source"] != "declared" else None
    serve_cost = costs(hw, served["output_tokens_per_s"], jpt)
    apis = [{**m, "usd_per_1m_output_at_this_mix": m["output"] + mix * m["input"]} for m in prices["models"]]
    ft = []
    for r in runs:
        hours = r["seconds"] / 3600
        ft.append({**r, "usd": hours * hw.usd_per_hour(), "kwh": hours * hw.watts / 1000})
    report = {"hardware": vars(hw), "usd_per_working_hour": hw.usd_per_hour(), "served": served,
              "serving": serve_cost, "prompt_tokens_per_output_token": mix, "api_prices_as_of": prices.get("as_of"),
              "apis": apis, "finetune": ft}
    _print_cost(report)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {cfg.out}/report.json")
    return 0


def _print_cost(r: dict) -> None:
    hw, s, c = r["hardware"], r["served"], r["serving"]
    print(f"assumptions ({hw['name']}; edit them with --hardware FILE): ${hw['price_usd']:g} written off over "
          f"{hw['lifetime_years']:g} years, working {100 * hw['utilization']:g}% of the hours, {hw['watts']:g} W, "
          f"${hw['electricity_usd_per_kwh']:g}/kWh, ${hw['overhead_usd_per_year']:g}/year overhead: "
          f"${r['usd_per_working_hour']:.4f} per working hour")
    print(f"throughput: {s['output_tokens_per_s']:.1f} output tokens/s ({s['source']}); energy: "
          f"{'measured by ' + s['energy_source'].upper() if s['energy_source'] != 'declared' else 'declared watts'}")
    print(f"corral here: ${c['usd_per_1m_tokens']:.2f} and {c['kwh_per_1m_tokens']:.2f} kWh per 1M output tokens "
          f"(prompts of {r['prompt_tokens_per_output_token']:.2f} tokens per output token included)")
    print(f"closed APIs (list prices as of {r['api_prices_as_of']}; $ per 1M output tokens with this prompt mix; "
          "other models: weigh what each answers well, not only its price):")
    for m in r["apis"]:
        print(f"  {m['name']:<18} ${m['usd_per_1m_output_at_this_mix']:>7.2f}   (input ${m['input']:g}, output "
              f"${m['output']:g} per 1M)")
    for f in r["finetune"]:
        print(f"fine-tune {f['run']}: {f['steps']} steps, {f['seconds'] / 60:.1f} min of training: ${f['usd']:.4f}, "
              f"{f['kwh']:.3f} kWh (declared watts)")


COST_DESCRIPTION = """\
What owning the model costs on this hardware: MODEL timed on a batch of chat prompts through the engine (or
--tokens-per-s), the hardware's price and power from --hardware (defaults printed; copy corral/data/hardware.yaml
and edit it), energy from RAPL/NVML counters where readable; $ and kWh per 1M tokens served and per fine-tune run
(--finetune RUN ...), next to a dated table of closed-API list prices (--prices to use your own)."""

VERBS = {"eval": (EvalConfig, evaluate, "score models on tasks (bundled, or your own YAML/JSONL) and compare them", (),
                  DESCRIPTION),
         "audit": (AuditConfig, run_audit, "what a fine-tune memorised: membership inference, extraction, canaries",
                   (), AUDIT_DESCRIPTION),
         "cost": (CostConfig, run_cost, "$ and kWh per 1M tokens and per fine-tune on your hardware, vs closed APIs",
                  (), COST_DESCRIPTION)}
