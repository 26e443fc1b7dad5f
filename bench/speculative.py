"""Speculative decoding: decode tokens/s of the target alone against target + draft, on the same prompts, in one run.

What it measures, for the target alone and for each (draft, k): the decode tokens/s of `Session` (the one-slot
engine behind `corral generate`, streaming detokenization included) summed over the prompts, the draft acceptance rate
(accepted / proposed draft tokens), the speedup over the target alone, and whether the greedy outputs equal the
target's token for token.

Target: the default model (SmolLM2-135M-Instruct Q4_1 GGUF) unless `--target`. Drafts:
- `pruned`: the target with every other decoder layer dropped, built here from the loaded model. Untrained after
  pruning, so it agrees with the target rarely: a stand-in until `corral distill` trains a real student; it shows
  what an untrained draft costs.
- `self`: the target drafting for itself. Acceptance is 100% but a draft step costs as much as a target step, so
  this measures the pure overhead of drafting and verifying (the speedup ceiling is (k+1) / (k+1 target-step
  equivalents + the verify's extra cost)).
- `--draft PATH`: any model with the target's tokenizer (e.g. a `corral distill` student), by path or name.

"Same output" compares greedy token ids with the target alone's. With fp32 weights (`--dtype float32`) they are
identical. A Q4 GGUF run 4-bit packed can differ after some tokens: its matmuls take bf16 activations, and rounding
to bf16 magnifies the last-bit difference between attention over k + 1 new queries (the verify) and over one (a
plain decode step) to logit differences of up to ~0.6 on this model, enough to flip a near-tie of the argmax. Both
outputs are the target's greedy output under its own rounding; which one differs is a property of the kernels.

Every configuration decodes every prompt once untimed (warm-up), then `--repeats` timed rounds run the
configurations interleaved (target, draft 1, draft 2, ..., target, ...) so that load on a shared machine hits them
alike; the best round of each is reported (interference only slows a run down). Quote the ratios, not the rates.

Run: `python bench/speculative.py [--draft PATH] [--k 2,4] [--threads 2] [--max-tokens 64]` from the repository root.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain what a hash table is to a beginner.",
    "Give me three tips for staying focused while studying.",
]


def prune_every_other(model):  # a LlamaForCausalLM in, a smaller one out
    """A depth-pruned copy: decoder layers 0, 2, 4, ... of `model`, with its embedding, final norm and head."""
    import torch

    draft = copy.deepcopy(model)
    draft.model.layers = torch.nn.ModuleList(list(draft.model.layers)[::2])
    draft.config = dataclasses.replace(model.config, num_hidden_layers=len(draft.model.layers))
    return draft


def read_prompts(path: str | None, system: str | None, limit: int | None) -> list[list[dict[str, str]]]:
    """The chats to decode: PROMPTS, or --prompts' lines (`question` / `prompt`: one user turn; `messages`: a chat
    without its trailing assistant turn), each after `system` when given. A bad line raises ValueError."""
    import json

    if path is None:
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    else:
        chats = []
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: not JSON ({e.msg})") from None
            text = obj.get("question", obj.get("prompt")) if isinstance(obj, dict) else None
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if isinstance(text, str):
                chats.append([{"role": "user", "content": text}])
            elif isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
                chats.append(msgs[:-1] if msgs[-1].get("role") == "assistant" else msgs)
            else:
                raise ValueError(f"{path}: line {n}: expected a `question`, `prompt` or `messages` key")
        if not chats:
            raise ValueError(f"{path}: no prompts")
    chats = chats[:limit] if limit else chats
    if system:
        chats = [[{"role": "system", "content": system}, *[m for m in c if m.get("role") != "system"]] for c in chats]
    return chats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None, help="target model (default: the default model)")
    ap.add_argument("--draft", default=None, help="a draft model path or name (besides `pruned` and `self`)")
    ap.add_argument("--no-builtin", action="store_true", help="skip the `pruned` and `self` drafts")
    ap.add_argument("--k", default="4", help="draft tokens per round, comma-separated (default 4)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples, seeded")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="as `corral generate --dtype` (auto: a Q4 GGUF runs packed 4-bit)")
    ap.add_argument("--prompts", default=None,
                    help="JSONL of your own prompts: `question` or `prompt` (one user turn) or `messages` (a chat, "
                         "a trailing assistant turn dropped), e.g. examples/acme/eval.jsonl (default: 4 built-in)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N of --prompts")
    ap.add_argument("--system", default=None, help="a system message put before each prompt")
    ap.add_argument("--stop-at-eos", action="store_true",
                    help="end each reply at the model's end of turn (default: always --max-tokens tokens)")
    args = ap.parse_args()

    import torch

    from corral.chat import encode_chat
    from corral.engine.sampling import SamplingParams
    from corral.model.loader import load_model
    from corral.text import Session, check_draft
    from corral.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.target, device=args.device, dtype=args.dtype)
    tok = load_tokenizer(lm.path)
    try:
        chats = read_prompts(args.prompts, args.system, args.limit)
    except ValueError as e:
        print(f"speculative.py: error: {e}", file=sys.stderr)
        return 2
    prompts = [encode_chat(tok, chat) for chat in chats]
    ks = [int(k) for k in args.k.split(",")]

    drafts = {}
    if not args.no_builtin:
        drafts[f"pruned ({lm.config.num_hidden_layers // 2 + lm.config.num_hidden_layers % 2} of "
               f"{lm.config.num_hidden_layers} layers)"] = prune_every_other(lm.model)
        drafts["self"] = lm.model
    if args.draft:
        d = load_model(args.draft, device=args.device, dtype=args.dtype)
        check_draft(tok, load_tokenizer(d.path), lm.path.name, args.draft)
        drafts[d.path.name] = d.model
    seq = max(len(p) for p in prompts) + args.max_tokens + 8
    configs = {"target alone": Session(lm.model, tok, max_seq_len=seq)}
    for name, model in drafts.items():
        for k in ks:
            configs[f"{name}, k={k}"] = Session(lm.model, tok, max_seq_len=seq, draft=model, draft_tokens=k)

    def run(gen: Session) -> tuple[float, int, int, int, list[list[int]]]:
        decode_s, tokens, proposed, accepted, outs = 0.0, 0, 0, 0, []
        for i, ids in enumerate(prompts):
            gen.reset()  # no prefix reuse between runs: each prompt from an empty cache
            p = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=i,
                               ignore_eos=not args.stop_at_eos)
            r = gen.generate(ids, p)
            decode_s += r.seconds - r.prefill_s
            tokens += r.completion_tokens - 1  # the first token comes from the prefill
            proposed, accepted = proposed + r.draft_proposed, accepted + r.draft_accepted
            outs.append(r.token_ids)
        return decode_s, tokens, proposed, accepted, outs

    print(f"target {lm.path.name} ({lm.config.num_hidden_layers} layers) on {lm.model.device}, "
          f"{torch.get_num_threads()} threads; {len(prompts)} chat prompts x "
          f"{'up to ' if args.stop_at_eos else ''}{args.max_tokens} tokens, "
          f"temperature {args.temperature}, dtype {args.dtype}{' (4-bit weights)' if lm.quantized else ''}; "
          f"best of {args.repeats}", flush=True)
    t0 = time.perf_counter()
    for gen in configs.values():
        run(gen)  # warm-up
    best: dict[str, float] = {}
    stats: dict[str, tuple[int, int, list[list[int]]]] = {}
    for _ in range(args.repeats):
        for name, gen in configs.items():
            s, n, prop, acc, outs = run(gen)
            best[name] = max(best.get(name, 0.0), n / s)
            stats[name] = (prop, acc, outs)
    base_tps, base_outs = best["target alone"], stats["target alone"][2]
    print(f"{'configuration':<32} {'decode tok/s':>12} {'speedup':>8} {'acceptance':>10} {'same output':>11}")
    for name in configs:
        prop, acc, outs = stats[name]
        same = "-" if name == "target alone" or args.temperature > 0 else (
            "yes" if outs == base_outs else f"{sum(a == b for a, b in zip(outs, base_outs, strict=True))}/"
                                            f"{len(outs)} prompts")
        rate = f"{acc / prop:.0%}" if prop else "-"
        print(f"{name:<32} {best[name]:>12.1f} {best[name] / base_tps:>7.2f}x {rate:>10} {same:>11}")
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
