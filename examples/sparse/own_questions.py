"""Is a missed held-out fact unknown, or known only in its training wording? For each held-out question of a set,
the fine-tuned model answers the set's own training questions of the same fact (each conversation's user turn
before the first reply that carries the fact's answer), and the share it gets right is reported separately for the
held-out questions it got right and those it missed.

    python examples/sparse/own_questions.py clinic runs/sparse-comp/clinic-chat

RUN is a `run_recipe.py` conversation run (its `heldout_eval.json` and `adapter/`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", help="a fact set folder here (clinic, freight, water)")
    ap.add_argument("run", type=Path, help="its run folder from run_recipe.py (a conversation run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from corral.chat import encode_chat
    from corral.engine.sampling import SamplingParams
    from corral.eval.harness import load_eval_model
    from corral.text import generate_many as generate

    torch.set_num_threads(args.threads)
    folder = HERE / args.set
    system = json.loads((folder / "meta.json").read_text()).get("system")
    held = json.loads((args.run / "heldout_eval.json").read_text())["results"]
    train = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines() if x.strip()]
    em = load_eval_model(str(args.run / "adapter"), dtype="float32")
    sys_msg = [{"role": "system", "content": system}] if system else []
    asks = []  # (held-out index, the conversation up to the reply, the accepted strings)
    for i, h in enumerate(held):
        keys = [h["answer"], *h.get("accept", [])]
        for row in train:
            turns = [m for m in row["messages"] if m["role"] != "system"]
            at = next((j for j, m in enumerate(turns) if m["role"] == "assistant" and j > 0
                       and any(k.lower() in m["content"].lower() for k in keys)), None)
            if at is not None:
                asks.append((i, turns[:at], keys))
    gens = generate(em.model, em.tok, [encode_chat(em.tok, [*sys_msg, *ctx]) for _, ctx, _ in asks],
                    SamplingParams(max_tokens=64))
    right: dict[int, list[bool]] = {}
    for (i, _, keys), g in zip(asks, gens, strict=True):
        right.setdefault(i, []).append(any(k.lower() in g.text.lower() for k in keys))
    for ok in (True, False):
        shares = [sum(right[i]) / len(right[i]) for i, h in enumerate(held) if h["ok"] == ok and i in right]
        if shares:
            print(f"{args.set}: held-out {'right' if ok else 'missed'}: {len(shares)} facts; their own training "
                  f"questions answered right: {sum(shares) / len(shares):.0%} on average; all of them for "
                  f"{sum(s == 1.0 for s in shares)}, none for {sum(s == 0.0 for s in shares)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
