"""Train the prompt-injection detector (corral/guard/injection.py) and measure it.

    python scripts/train_injection.py            # cross-validate on the training set, fit, write the bundled model,
                                                 # print the held-out precision / recall / F1
    python scripts/train_injection.py --check    # only score the committed model on the held-out set

The settings (L2 penalty, vocabulary size) are chosen by 5-fold cross-validation on injection_train.jsonl only;
injection_heldout.jsonl is read once, at the end, to report. Deterministic: the folds come from a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from corral.guard.injection import HEURISTICS, MODEL_PATH, InjectionDetector, fit, metrics, read_texts  # noqa: E402

DATA = ROOT / "corral" / "guard" / "data"
GRID = [(l2, k) for l2 in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3) for k in (2000, 5000, None)]


def cross_validate(texts: list[str], labels: list[int], l2: float, k: int, folds: int = 5) -> float:
    order = np.random.default_rng(0).permutation(len(texts))
    f1s = []
    for f in range(folds):
        test = set(order[f::folds].tolist())
        tr = [i for i in range(len(texts)) if i not in test]
        det = fit([texts[i] for i in tr], [labels[i] for i in tr], l2=l2, max_features=k)
        te = sorted(test)
        pred = [det.check(texts[i]).flagged for i in te]
        f1s.append(metrics(pred, [labels[i] for i in te])["f1"])
    return float(np.mean(f1s))


def report(det: InjectionDetector, path: Path) -> dict:
    texts, labels, ids = read_texts(path)
    t0 = time.perf_counter()
    results = [det.check(t) for t in texts]
    ms = (time.perf_counter() - t0) / len(texts) * 1000
    m = metrics([r.flagged for r in results], labels)
    m["ms_per_text"] = ms
    misses = [(i, r.score) for i, r, y in zip(ids, results, labels, strict=True) if r.flagged != bool(y)]
    m["errors"] = [f"{i} ({s:.2f})" for i, s in misses]
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only score the committed model on the held-out set")
    ap.add_argument("--out", default=str(MODEL_PATH), help=f"where the model goes (default {MODEL_PATH})")
    args = ap.parse_args()
    heldout = DATA / "injection_heldout.jsonl"
    if not args.check:
        texts, labels, _ = read_texts(DATA / "injection_train.jsonl")
        scores = {}
        for l2, k in GRID:
            scores[l2, k] = cross_validate(texts, labels, l2, k)
            print(f"cv  l2={l2:g}  features={k or 'all'}: F1 {scores[l2, k]:.3f}")
        l2, k = max(scores, key=lambda c: (round(scores[c], 3), -(c[1] or 10**9)))  # ties: the smaller file
        det = fit(texts, labels, l2=l2, max_features=k)
        det.meta = {"trained_on": "corral/guard/data/injection_train.jsonl", "rows": len(texts), "l2": l2,
                    "features": len(det.vocab), "cv_f1": round(scores[l2, k], 4),
                    "script": "scripts/train_injection.py"}
        det.save(args.out)
        print(f"chose l2={l2:g}, {len(det.vocab)} n-grams (5-fold CV F1 {scores[l2, k]:.3f}); wrote {args.out} "
              f"({Path(args.out).stat().st_size / 1024:.0f} KiB)")
    det = InjectionDetector.load(args.out)
    m = report(det, heldout)
    print(f"held-out ({m['n']} texts): precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
          f"accuracy {m['accuracy']:.3f}  ({m['tp']} tp, {m['fp']} fp, {m['fn']} fn; "
          f"{m['ms_per_text']:.2f} ms per text)")
    print("misclassified:", ", ".join(m["errors"]) or "none")
    top = sorted(det.vocab, key=lambda g: -det.weights[det.vocab[g]])[:15]
    print("strongest n-grams:", ", ".join(repr(g) for g in top))
    print("heuristic weights:", json.dumps({k: round(float(w), 2) for k, w in
                                            zip(HEURISTICS, det.heuristic_weights, strict=True)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
