"""Single-stream CPU inference: corral against llama.cpp (llama-cpp-python) on the default GGUF, in one run.

What it measures, for each program, on the same model file (SmolLM2-135M-Instruct Q4_1 unless corral's registry
says otherwise), the same thread count and the same prompt token ids:

- prompt tokens/s: the whole prompt fed from an empty cache, plus the greedy pick of the first new token;
- decode tokens/s: the remaining `--decode-tokens - 1` steps, each one forward of one token plus its greedy pick
  (argmax), timed as one loop; corral's figure comes from its own `Session` (a one-slot engine), so it also pays
  for streaming detokenization, as `corral generate` does;
- peak RSS: `ru_maxrss` of the program's own process (each side runs in a fresh subprocess);
- load time: wall time from before the heavy imports (torch / llama_cpp) to a model ready to generate, and the model
  load alone.

Each side first runs one short untimed warm-up generation, then `--repeats` timed ones from an empty cache (corral:
`reset()`, so no prefix reuse; llama.cpp: `reset()`). The figure reported is the best of the repeats for
both sides: on a shared machine interference only slows a run down, so the best run is the steadiest estimate; every
run's figures go to `--json`. Ratios are corral / llama.cpp (above 1 is better for corral on speed, worse on memory
and load time). The children run one after the other, never at once.

The prompt is an original English paragraph, repeated as needed, tokenized with corral's tokenizer and cut to
`--prompt-tokens` ids; llama.cpp is given the same ids. The greedy continuations of both are compared for their
first tokens, for information only: llama.cpp quantizes activations to 8 bits in Q4_1 matmuls, so near-ties can flip.

Run: `make bench`, or `python bench/decode_cpu.py [--threads 2] [--json out.json]` from the repository root with
corral installed (`pip install -e '.[peers]'`). Figures on a 2-core machine are noisy: quote ratios, not rates.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PARAGRAPH = (
    "The ferry left the harbour a little after six, when the fog still lay flat on the water and the gulls sat in "
    "rows along the railings, waiting for someone to drop a crust. Most of the passengers were people who made the "
    "crossing every day: nurses going to the early shift at the island hospital, a baker with two trays of bread "
    "wrapped in cloth, a boy with a cello case that was nearly as tall as he was. Nobody talked much. The engine "
    "shook the benches in a slow, steady rhythm, and the smell of diesel mixed with salt and coffee. Halfway across, "
    "the sun came through, and for a few minutes the whole bay turned the colour of weak tea. Then the lighthouse "
    "appeared on the left, white and a bit crooked, and the captain sounded the horn twice, as he always did, to let "
    "the keeper's dog know that breakfast was on its way. "
)
AGREE_TOKENS = 32  # how many leading greedy tokens to compare between the two programs
LLAMA_CTX = 2048


def build_prompt(n_tokens: int) -> list[int]:
    """The first `n_tokens` ids of the paragraph, repeated as often as needed, in corral's tokenization."""
    from corral.registry import default_model_path
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(default_model_path())
    text = PARAGRAPH
    ids = tok.encode(text)
    while len(ids) < n_tokens:
        text += PARAGRAPH
        ids = tok.encode(text)
    return ids[:n_tokens]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_corral(spec: dict) -> dict:
    """Child: load corral, time prefill and decode from an empty cache `repeats` times."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec["threads"])
    from corral.engine.sampling import SamplingParams
    from corral.model.loader import load_model
    from corral.text import Session
    from corral.tokenizer import load_tokenizer

    t1 = time.perf_counter()
    lm = load_model(spec["model_path"], device="cpu", dtype=spec["dtype"])
    tok = load_tokenizer(lm.path)
    gen = Session(lm.model, tok, compile=spec["compile"])
    t2 = time.perf_counter()

    ids = spec["prompt_ids"]
    gen.generate(ids, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))  # warm-up (and compile)
    t3 = time.perf_counter()
    params = SamplingParams(max_tokens=spec["decode_tokens"], temperature=0.0, ignore_eos=True)
    runs, out_ids = [], []
    for _ in range(spec["repeats"]):
        gen.reset()  # no prefix reuse: every run prefills the whole prompt
        r = gen.generate(ids, params)
        assert r.cached_tokens == 0 and r.completion_tokens == spec["decode_tokens"]
        runs.append({"prefill_s": r.prefill_s, "decode_s": r.seconds - r.prefill_s,
                     "prompt_tps": r.prefill_tps, "decode_tps": r.decode_tps})
        out_ids = r.token_ids
    mode = f"dtype {spec['dtype']}"
    if spec["compile"]:
        mode += f", --compile (warm-up incl. compile {t3 - t2:.0f} s)"
    return {"runs": runs, "token_ids": out_ids, "import_load_s": t2 - t0, "load_s": t2 - t1,
            "peak_rss_mib": _peak_rss_mib(), "version": f"torch {torch.__version__}, {mode}"}


def run_llamacpp(spec: dict) -> dict:
    """Child: load llama.cpp, time prefill and decode (one token per `eval`, argmax on the host)."""
    t0 = time.perf_counter()
    import llama_cpp
    import numpy as np

    t1 = time.perf_counter()
    threads = spec["threads"]
    llm = llama_cpp.Llama(model_path=spec["model_path"], n_ctx=LLAMA_CTX, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    t2 = time.perf_counter()
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        # The last evaluated position's logits, read in place (without logits_all, llm.scores is not filled).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def generate(ids: list[int], n: int) -> tuple[list[int], float, float]:
        llm.reset()
        a = time.perf_counter()
        llm.eval(ids)
        out = [greedy()]
        b = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(greedy())
        return out, b - a, time.perf_counter() - b

    ids, n = spec["prompt_ids"], spec["decode_tokens"]
    generate(ids, 8)  # warm-up
    runs, out_ids = [], []
    for _ in range(spec["repeats"]):
        out_ids, prefill_s, decode_s = generate(ids, n)
        runs.append({"prefill_s": prefill_s, "decode_s": decode_s, "prompt_tps": len(ids) / prefill_s,
                     "decode_tps": (n - 1) / decode_s if n > 1 else 0.0})
    return {"runs": runs, "token_ids": out_ids, "import_load_s": t2 - t0, "load_s": t2 - t1,
            "peak_rss_mib": _peak_rss_mib(), "version": f"llama-cpp-python {llama_cpp.__version__}"}


CHILDREN = {"corral": run_corral, "llamacpp": run_llamacpp}
LABELS = {"corral": "corral", "llamacpp": "llama.cpp"}


def spawn(side: str, spec: dict) -> dict:
    """Run one side in a fresh interpreter (so its peak RSS is its own); the spec goes in on stdin, JSON comes back
    on stdout's last line."""
    proc = subprocess.run([sys.executable, __file__, "--child", side], input=json.dumps(spec), text=True,
                          stdout=subprocess.PIPE)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.exit(f"decode_cpu: the {LABELS[side]} run failed (exit {proc.returncode}); its error is printed above")
    res = json.loads(lines[-1])
    best = {k: max(r[k] for r in res["runs"]) for k in ("prompt_tps", "decode_tps")}
    return {**res, **best}


def agreement(a: list[int], b: list[int], k: int) -> int:
    """How many leading tokens of the two continuations are equal (up to k)."""
    n = 0
    for x, y in zip(a[:k], b[:k], strict=False):
        if x != y:
            break
        n += 1
    return n


def report(results: dict[str, dict], args: argparse.Namespace) -> dict[str, float]:
    from rich.console import Console
    from rich.table import Table

    sides = list(results)
    both = len(sides) == 2
    rows = [("prompt tokens/s", "prompt_tps", "{:.1f}"), ("decode tokens/s", "decode_tps", "{:.1f}"),
            ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"), ("import + load (s)", "import_load_s", "{:.2f}"),
            ("load (s)", "load_s", "{:.2f}")]
    table = Table(title=f"single-stream CPU, {args.threads} threads, {args.prompt_tokens}-token prompt, "
                        f"{args.decode_tokens} decoded tokens, best of {args.repeats}")
    table.add_column("")
    for s in sides:
        table.add_column(LABELS[s], justify="right")
    if both:
        table.add_column("corral / llama.cpp", justify="right")
    ratios = {}
    for label, key, fmt in rows:
        cells = [fmt.format(results[s][key]) for s in sides]
        if both:
            ratios[key] = results["corral"][key] / results["llamacpp"][key]
            cells.append(f"{ratios[key]:.2f}")
        table.add_row(label, *cells)
    console = Console()
    console.print(table)
    for s in sides:
        console.print(f"{LABELS[s]}: {results[s]['version']}")
    if both:
        k = min(AGREE_TOKENS, args.decode_tokens)
        m = agreement(results["corral"]["token_ids"], results["llamacpp"]["token_ids"], k)
        ratios["agree_tokens"] = m
        note = "" if m == k else " (near-ties can flip: llama.cpp uses 8-bit activations in Q4_1 matmuls)"
        console.print(f"greedy continuations agree on the first {m} of {k} tokens{note}")
        console.print(f"decode ratio corral/llama.cpp = {ratios['decode_tps']:.2f} (target >= 0.7)")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for both programs (default 2)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    ap.add_argument("--decode-tokens", type=int, default=128, help="tokens to generate greedily (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per program; the best is reported (default 3)")
    ap.add_argument("--dtype", default="auto", help="corral's --dtype (default auto: packed 4-bit for Q4 GGUFs)")
    ap.add_argument("--compile", action="store_true", help="corral's --compile (torch.compile the decode step)")
    ap.add_argument("--only", choices=sorted(CHILDREN), help="run one program only (no ratios)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure, per run, to this JSON file")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(CHILDREN[args.child](json.load(sys.stdin))))
        return

    if min(args.threads, args.prompt_tokens, args.decode_tokens, args.repeats) < 1:
        ap.error("--threads, --prompt-tokens, --decode-tokens and --repeats must be >= 1")
    if args.prompt_tokens + args.decode_tokens > LLAMA_CTX:
        ap.error(f"--prompt-tokens + --decode-tokens must fit llama.cpp's context here ({LLAMA_CTX})")
    try:
        from corral.registry import default_model_path
    except ModuleNotFoundError:
        sys.exit("decode_cpu: corral is not importable; run `make bench`, or `pip install -e '.[peers]'` first")

    spec = {"threads": args.threads, "dtype": args.dtype, "compile": args.compile, "decode_tokens": args.decode_tokens,
            "repeats": args.repeats, "model_path": str(default_model_path()),
            "prompt_ids": build_prompt(args.prompt_tokens)}
    sides = [args.only] if args.only else ["corral", "llamacpp"]
    results = {s: spawn(s, spec) for s in sides}
    ratios = report(results, args)
    if args.json:
        cfg = {k: v for k, v in spec.items() if k != "prompt_ids"} | {"prompt_tokens": args.prompt_tokens,
                                                                       "statistic": "best of repeats"}
        with open(args.json, "w") as f:
            json.dump({"config": cfg, **results, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
