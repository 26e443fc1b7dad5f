"""The CUDA paths in one run: model parity, the int4 kernel, the batched engine and fine-tuning, on a GPU.

    python bench/gpu_check.py --write-assets gpu_assets      # here: the default model's config + tokenizer
    python bench/gpu_check.py --assets gpu_assets [--out report.json] [--tiny] [--device cuda]   # on the GPU

FOLDER is an HF folder without weights (config.json + tokenizer files): the model is built there with random
weights of that shape (the GPU machines reach no hub, and the default GGUF is too big to carry). Random weights
are enough for what is checked: the CUDA forward against the CPU's, the CUDA int4 layout against dequantized
weights, greedy batch-vs-alone outputs, throughput, and fine-tuning speed, memory and exact resume.
`--tiny` shrinks the model so the whole script can be tried on a CPU first. Each section reports its own error
and the others go on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.config import ModelConfig  # noqa: E402
from corral.formats.hf import save_hf_folder  # noqa: E402
from corral.model.llama import LlamaForCausalLM  # noqa: E402
from corral.model.loader import load_model  # noqa: E402
from corral.tokenizer import load_tokenizer  # noqa: E402

REPORT: dict = {}


def section(name):
    def wrap(fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                REPORT[name] = fn(*a, **kw)
            except Exception as e:  # a report of what broke, and the next section runs
                REPORT[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            REPORT[name] = {**REPORT[name], "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(REPORT[name], indent=1)[:3000], flush=True)
        return run
    return wrap


def build_random(assets: Path, out: Path, tiny: bool) -> Path:
    cfg = ModelConfig.from_hf_file(assets / "config.json")
    if tiny:
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 64, 128, 2
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.05)
    model.reset_rope()
    tok = load_tokenizer(assets)
    shutil.rmtree(out, ignore_errors=True)
    save_hf_folder(model, cfg, tok, assets, out)
    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


@section("forward_parity")
def forward_parity(folder: Path, dev: torch.device):
    ids = torch.randint(0, 49152 if "smol" in str(folder) else 1000, (2, 256))
    ref = load_model(str(folder), device="cpu", dtype="float32").model
    with torch.no_grad():
        want = ref(ids)
    out = {}
    for dt in ("float32", "bfloat16"):
        m = load_model(str(folder), device=str(dev), dtype=dt).model
        with torch.no_grad():
            got = m(ids.to(dev)).float().cpu()
        out[dt] = {"max_abs_over_std": float((got - want).abs().max() / want.std()),
                   "top1_agree": float((got.argmax(-1) == want.argmax(-1)).float().mean())}
        del m
    return out


@section("int4_cuda")
def int4_cuda(folder: Path, dev: torch.device, tmp: Path):
    from corral.model.export import export_gguf

    gguf = tmp / "q4.gguf"
    export_gguf(str(folder), gguf, quant="q4_0", force=True)
    ids = torch.randint(0, 1000, (1, 128))
    ref = load_model(str(gguf), device="cpu", dtype="float32").model  # the same 4-bit weights, dequantized
    q = load_model(str(gguf), device=str(dev), dtype="int4")
    with torch.no_grad():
        want, got = ref(ids), q.model(ids.to(dev)).float().cpu()
    return {"quantized": q.quantized, "max_abs_over_std": float((got - want).abs().max() / want.std()),
            "top1_agree": float((got.argmax(-1) == want.argmax(-1)).float().mean()), "gguf": str(gguf)}


def run_engine(model, tok, prompts, max_tokens, max_batch, compile=False):
    from corral.engine.engine import Engine, Request, Tokens
    from corral.engine.sampling import SamplingParams

    eng = Engine(model, stop_ids=tok.stop_ids, max_batch=max_batch, max_seq_len=1024, compile=compile)
    if compile:
        eng.warm_up()
    toks: list[list[int]] = [[] for _ in prompts]

    def cb(i):
        def f(ev):
            if isinstance(ev, Tokens):
                toks[i] += ev.token_ids
        return f

    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        eng.submit(Request(p, SamplingParams(max_tokens=max_tokens, ignore_eos=True), cb(i)))
    eng.run_until_idle()
    sync(model.device)
    return toks, time.perf_counter() - t0


@section("engine")
def engine(folder: Path, dev: torch.device, gguf: Path | None, tiny: bool):
    tok = load_tokenizer(folder)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1000, (96,), generator=g).tolist() for _ in range(64)]
    out = {}
    for label, path, dtype in (("bf16", folder, "bfloat16"), ("int4", gguf, "int4")):
        if path is None:
            continue
        m = load_model(str(path), device=str(dev), dtype=dtype).model
        run_engine(m, tok, prompts[:2], 8, 2)  # warm-up
        alone = [run_engine(m, tok, [p], 32, 1)[0][0] for p in prompts[:4]]
        batched, _ = run_engine(m, tok, prompts[:16], 32, 16)
        _, t1 = run_engine(m, tok, prompts[:1], 128, 1)
        r = {"greedy_alone_equals_batch16": sum(a == b for a, b in zip(alone, batched[:4], strict=True)) / 4,
             "tokens_checked": len(alone[0]), "batch1_tok_s": round(128 / t1, 1)}
        for b in (16, 64):
            toks, t = run_engine(m, tok, prompts[:b], 128, b)
            r[f"batch{b}_tok_s"] = round(sum(len(x) for x in toks) / t, 1)
        out[label] = r
        del m
    return out


@section("engine_compiled")
def engine_compiled(folder: Path, dev: torch.device):
    tok = load_tokenizer(folder)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1000, (96,), generator=g).tolist() for _ in range(64)]
    m = load_model(str(folder), device=str(dev), dtype="bfloat16").model
    t0 = time.perf_counter()
    run_engine(m, tok, prompts[:2], 4, 64, compile=True)
    r = {"compile_and_warmup_s": round(time.perf_counter() - t0, 1)}
    for b in (1, 64):
        toks, t = run_engine(m, tok, prompts[:b], 128, 64, compile=True)
        r[f"batch{b}_tok_s"] = round(sum(len(x) for x in toks) / t, 1)
    return r


@section("finetune")
def finetune_cuda(folder: Path, dev: torch.device, tmp: Path, tiny: bool):
    from corral.train.config import FinetuneConfig
    from corral.train.loop import finetune

    data = ROOT / "examples" / "acme" / "train.jsonl"
    base = dict(model=str(folder), data=str(data), batch_size=8, max_seq_len=512, max_steps=12, lr=1e-3,
                warmup_steps=2, save_every=5, eval_every=1000, seed=0, device=str(dev), packing=True,
                augment=0, replay=0.0, eval_tasks=[],  # the loop alone, with the settings of its earlier figures
                lora_r=16, lora_alpha=32.0, lora_dropout=0.0, ema=0.0)
    out = {}

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]

    for label, kw in (("lora", {}), ("qlora", {"method": "qlora"}), ("full", {"method": "full"}),
                      ("lora_ckpt", {"grad_checkpointing": True})):
        run = tmp / f"ft-{label}"
        shutil.rmtree(run, ignore_errors=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        finetune(FinetuneConfig(**base, out=str(run), **kw), progress=False)
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        meta = json.loads((run / "config.json").read_text())
        out[label] = {"tok_s_median": round(statistics.median(r["tokens_per_s"] for r in recs[2:]), 1),
                      "first_last_loss": [round(recs[0]["loss"], 3), round(recs[-1]["loss"], 3)],
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None,
                      "model_mb": round(meta["model_mb"]), "fp32_model_mb": round(meta["fp32_model_mb"])}
    # exact resume on this device: stop after step 7 (checkpoint at 5), resume, compare with the straight run
    straight, crashed = tmp / "ft-lora", tmp / "ft-crash"
    shutil.rmtree(crashed, ignore_errors=True)
    cfg = dict(base, out=str(crashed))
    finetune(FinetuneConfig(**cfg), stop_after=7, progress=False)
    finetune(FinetuneConfig(**cfg, resume=True), progress=False)
    a, b = losses(straight), losses(crashed)
    out["resume"] = {"equal": a == b, "max_rel_diff": max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets")
    ap.add_argument("--write-assets", metavar="FOLDER", help="write the default model's config.json and tokenizer "
                    "files (no weights) to FOLDER, then stop")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--tmp", default="/tmp/corral-gpu-check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    if args.write_assets:
        lm = load_model("default", device="cpu", dtype="float32")
        out = Path(args.write_assets)
        save_hf_folder(lm.model, lm.config, load_tokenizer(lm.path), lm.path, out)
        (out / "model.safetensors").unlink()
        print(f"wrote {out}: config and tokenizer files")
        return 0
    if not args.assets:
        ap.error("--assets FOLDER is required (make one with --write-assets)")
    dev = torch.device(args.device)
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    REPORT["env"] = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev.type == "cuda"
                     else "cpu"}
    folder = build_random(Path(args.assets), tmp / ("smol-random" if not args.tiny else "tiny-random"), args.tiny)
    forward_parity(folder, dev)
    int4_cuda(folder, dev, tmp)
    gguf = REPORT.get("int4_cuda", {}).get("gguf")
    engine(folder, dev, Path(gguf) if gguf else None, args.tiny)
    finetune_cuda(folder, dev, tmp, args.tiny)
    if not args.skip_compile:
        engine_compiled(folder, dev)
    Path(args.out).write_text(json.dumps(REPORT, indent=2) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
