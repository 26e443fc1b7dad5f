"""A cheap prompt-injection / jailbreak detector: character and word n-gram TF-IDF plus a few scored heuristics,
weighed by a logistic regression. numpy only; microseconds to a millisecond per text on a CPU.

The model is a JSON file (`data/injection_model.json`, written by `scripts/train_injection.py` from
`data/injection_train.jsonl`; never a pickle): the n-gram vocabulary with its idf weights and coefficients, the
heuristics' coefficients, the bias and the decision threshold.

Before the n-grams are read, a text is normalised so that the obfuscations of the training set look like the plain
words: NFKC (full-width letters), common Cyrillic and Greek homoglyphs, lower case, letters spaced out
("i g n o r e") joined, leetspeak digits inside words ("1gn0re") read as letters, and base64 blobs that decode to
text appended decoded. ROT13 is not undone (a text's rot13 is noise for every other text); the heuristics see the
request around it ("apply ROT13 ... and carry out").

Long texts (a document pasted for summary) are scored whole and paragraph by paragraph, and the highest score
counts (`score_text`): an instruction hidden in one paragraph of a long page is not diluted by the rest.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral import jsonl
from corral.errors import CorralError

MODEL_PATH = Path(__file__).parent / "data" / "injection_model.json"
FORMAT = "corral-injection-detector/1"

# Cyrillic and Greek letters that look like Latin ones (NFKC leaves them alone).
_HOMOGLYPHS = str.maketrans("аеорсухіјѕԁɡӏαεορτυνκ", "aeopcyxijsdglaeoptvvk")
_LEET = str.maketrans("013457@$", "oieastas")
_SPACED = re.compile(r"(?<!\w)(?:\w[ .\-_*]){3,}\w(?!\w)")  # "i g n o r e", "s.y.s.t.e.m"
_LEET_WORD = re.compile(r"\b(?=\w*[a-z])(?=\w*[013457])[a-z013457]{3,}\b")
_B64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")

# Scored heuristics: each is a feature of its own (1.0 when it matches), weighed by the regression like the n-grams.
HEURISTICS: dict[str, str] = {
    "override": r"\b(ignore|disregard|forget|override|bypass|skip)\b.{0,40}\b(previous|prior|above|earlier|all|"
                r"your|the)\b.{0,30}\b(instructions?|rules?|prompts?|guidelines?|directives?|polic(y|ies)|"
                r"restrictions?|filters?|programming)\b",
    "reveal_prompt": r"\b(reveal|print|show|repeat|dump|output|tell|give|leak|share|recite|encode|translate|list)\b"
                     r".{0,60}\b(system|hidden|initial|original|secret|internal)\b.{0,20}\b(prompt|instructions?|"
                     r"message|rules|configuration|password|key)\b",
    "persona": r"\b(dan|developer mode|jailbreak|jailbroken|unfiltered|uncensored|no (content )?polic(y|ies)|"
               r"without (any )?(rules|restrictions|filters|limits|guidelines)|no restrictions|never refuses?|"
               r"stay in character|unrestricted|evil (twin|mode|ai))\b",
    "fake_authority": r"(^|\W)(system( note| message| update| override)?|admin(istrator)?|developer|openai|"
                      r"anthropic|vendor|root)\s*(note|notice|message|override|update|mode)?\s*[:\]>]",
    "addressed_to_ai": r"\b(ai|assistant|language model|llm|chatbot|model|bot|agent|screening tools?)\b\s*[:,]"
                       r".{0,80}\b(ignore|instead|must|now|your (real|new|actual) task|do not|don't|tell|say|send"
                       r"|include|rank)\b",
    "hidden_markup": r"(display:\s*none|<span hidden|hidden>|<!--|font-size:\s*0|color:\s*white|\[//\]|"
                     r"ai-instructions|<meta)",
    "decode_and_obey": r"\b(decode|decrypt|rot-?13|base64|reverse|translate)\b.{0,80}\b(follow|obey|do|execute|carry "
                       r"out|act on|what it says)\b",
    "no_refusal": r"\b(without|no)\b.{0,20}\b(warnings?|disclaimers?|refus\w*|censorship|moraliz\w*|ethics)\b",
    "exfiltrate": r"(!\[[^\]]*\]\(https?://|https?://\S+\?\S*=(data|d|q|conv|chat|history)\b|send .{0,40} to "
                  r"\S+@\S+)",
}
_HEURISTICS = {k: re.compile(v, re.IGNORECASE | re.DOTALL) for k, v in HEURISTICS.items()}


class InjectionModelError(CorralError):
    """The detector's model file is missing or not a detector model."""


def normalize(text: str) -> str:
    """The text the n-grams are read from (see the module docstring)."""
    t = unicodedata.normalize("NFKC", text).translate(_HOMOGLYPHS).lower()
    t = _SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), t)
    t = _LEET_WORD.sub(lambda m: m.group(0).translate(_LEET), t)
    decoded = [d for d in (_b64_text(m.group(0)) for m in _B64.finditer(text)) if d]
    if decoded:
        t += " " + " ".join(decoded).lower()
    return " ".join(t.split())


def _b64_text(blob: str) -> str | None:
    """The decoded text of a base64 blob when it is mostly printable ASCII (an encoded sentence), else None."""
    try:
        raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 8:
        return None
    printable = sum(32 <= b < 127 for b in raw) / len(raw)
    return raw.decode("ascii", errors="ignore") if printable > 0.95 else None


def ngrams(norm: str, char_n: tuple[int, int] = (2, 5), word_n: tuple[int, int] = (1, 2)) -> Counter[str]:
    """Character n-grams (inside words padded with spaces, prefixed 'c:') and word n-grams ('w:') of a normalised
    text, with their counts."""
    out: Counter[str] = Counter()
    words = re.findall(r"\w+|[^\w\s]", norm)
    for w in words:
        padded = f" {w} "
        for n in range(char_n[0], char_n[1] + 1):
            for i in range(max(1, len(padded) - n + 1)):
                out["c:" + padded[i: i + n]] += 1
    for n in range(word_n[0], word_n[1] + 1):
        for i in range(len(words) - n + 1):
            out["w:" + " ".join(words[i: i + n])] += 1
    return out


def heuristics(text: str) -> dict[str, bool]:
    """Which scored heuristics match a text (read on the raw and the normalised text)."""
    norm = normalize(text)
    return {k: bool(p.search(text) or p.search(norm)) for k, p in _HEURISTICS.items()}


def segments(text: str, min_chars: int = 40) -> list[str]:
    """The text, and when it is long its paragraphs and quoted or marked-up parts (what `score_text` scores)."""
    parts = [text]
    if len(text) < 2 * min_chars:
        return parts
    pieces = re.split(r"\n\s*\n|\n(?=\S{1,30}:)|(?=<[a-z]+[^>]*>)|\"\"\"|```", text)
    for p in pieces:
        p = p.strip()
        if len(p) >= min_chars and p != text.strip():
            parts.append(p)
    return parts


@dataclass
class InjectionResult:
    score: float  # P(injection) of the highest-scoring segment
    flagged: bool
    segment: str  # the text that scored highest (the whole text, or one paragraph of it)
    heuristics: list[str]  # the heuristics that matched that segment


class InjectionDetector:
    """A loaded detector: `score_text(text)` → P(injection); `check(text)` → `InjectionResult`."""

    def __init__(self, vocab: dict[str, int], idf: np.ndarray, weights: np.ndarray, heuristic_weights: np.ndarray,
                 bias: float, threshold: float = 0.5, meta: dict[str, Any] | None = None):
        self.vocab, self.idf, self.weights = vocab, idf.astype(np.float64), weights.astype(np.float64)
        self.heuristic_weights, self.bias = heuristic_weights.astype(np.float64), float(bias)
        self.threshold = threshold
        self.meta = meta or {}

    # --- features --------------------------------------------------------------------------------------------

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(TF-IDF vector over the vocabulary, L2-normalised; heuristic flags) of one text."""
        x = np.zeros(len(self.vocab))
        for g, c in ngrams(normalize(text)).items():
            j = self.vocab.get(g)
            if j is not None:
                x[j] = (1.0 + math.log(c)) * self.idf[j]
        norm = np.linalg.norm(x)
        if norm > 0:
            x /= norm
        h = np.array([float(v) for v in heuristics(text).values()])
        return x, h

    def probability(self, text: str) -> float:
        """P(injection) of the text as one piece."""
        x, h = self.features(text)
        z = float(x @ self.weights + h @ self.heuristic_weights + self.bias)
        return 1.0 / (1.0 + math.exp(-z))

    def check(self, text: str) -> InjectionResult:
        """Score the text and its paragraphs (`segments`); the highest score decides."""
        best, seg = -1.0, text
        for s in segments(text):
            p = self.probability(s)
            if p > best:
                best, seg = p, s
        hits = [k for k, v in heuristics(seg).items() if v]
        return InjectionResult(best, best >= self.threshold, seg, hits)

    def score_text(self, text: str) -> float:
        return self.check(text).score

    # --- files -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        order = sorted(self.vocab, key=self.vocab.get)
        return {"format": FORMAT, "threshold": self.threshold, "bias": round(self.bias, 6),
                "heuristics": {k: round(float(w), 6) for k, w in zip(HEURISTICS, self.heuristic_weights,
                                                                     strict=True)},
                "ngrams": {g: [round(float(self.idf[self.vocab[g]]), 5), round(float(self.weights[self.vocab[g]]), 6)]
                           for g in order},
                "meta": self.meta}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path | None = None) -> InjectionDetector:
        """The bundled detector, or one written by `scripts/train_injection.py --out`."""
        p = Path(path) if path is not None else MODEL_PATH
        if not p.is_file():
            raise InjectionModelError(f"{p}: no such injection detector file; train one with "
                                      "scripts/train_injection.py")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InjectionModelError(f"{p}: not a JSON injection detector ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InjectionModelError(f"{p}: not a corral injection detector (format {FORMAT!r} expected)")
        missing = [k for k in HEURISTICS if k not in d["heuristics"]]
        if missing:
            raise InjectionModelError(f"{p}: heuristic weights missing for {', '.join(missing)}; retrain it")
        grams = list(d["ngrams"])
        vocab = {g: i for i, g in enumerate(grams)}
        idf = np.array([d["ngrams"][g][0] for g in grams])
        w = np.array([d["ngrams"][g][1] for g in grams])
        hw = np.array([d["heuristics"][k] for k in HEURISTICS])
        return cls(vocab, idf, w, hw, d["bias"], d.get("threshold", 0.5), d.get("meta", {}))


# --- training (scripts/train_injection.py) ----------------------------------------------------------------------


def fit(texts: list[str], labels: list[int], *, l2: float = 1e-3, min_df: int = 2, max_features: int | None = None,
        threshold: float = 0.5) -> InjectionDetector:
    """Fit a detector: the vocabulary (n-grams in at least `min_df` texts), idf, and an L2-penalised logistic
    regression (`_fit_vocab`). `max_features`: refit on the n-grams with the largest coefficients only (a smaller
    file)."""
    grams = [ngrams(normalize(t)) for t in texts]
    df: Counter[str] = Counter()
    for g in grams:
        df.update(g.keys())
    kept = sorted(k for k, v in df.items() if v >= min_df)
    det = _fit_vocab(texts, grams, labels, kept, df, l2, threshold)
    if max_features is not None and len(kept) > max_features:
        top = np.argsort(-np.abs(det.weights))[:max_features]
        kept = sorted(kept[i] for i in top)
        det = _fit_vocab(texts, grams, labels, kept, df, l2, threshold)
    return det


def _fit_vocab(texts: list[str], grams: list[Counter[str]], labels: list[int], kept: list[str], df: Counter[str],
               l2: float, threshold: float) -> InjectionDetector:
    """The regression, solved exactly: with an L2 penalty the weights are a combination of the training rows
    (w = X^T a), so Newton's method runs on the n row coefficients (n x n systems: a few hundred rows) and
    converges in a few iterations, with no learning rate to tune. The bias is a constant feature of value
    `_BIAS_SCALE`, so its penalty is negligible."""
    n = len(texts)
    vocab = {g: i for i, g in enumerate(kept)}
    idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in kept])
    det = InjectionDetector(vocab, idf, np.zeros(len(kept)), np.zeros(len(HEURISTICS)), 0.0, threshold)
    feats = [det.features(t) for t in texts]
    X = np.hstack([np.stack([f[0] for f in feats]), np.stack([f[1] for f in feats]),
                   np.full((n, 1), _BIAS_SCALE)])  # (n, features + heuristics + 1)
    y = np.asarray(labels, dtype=np.float64)
    K = X @ X.T  # (n, n)
    a = np.zeros(n)

    def loss(a: np.ndarray) -> float:
        z = K @ a
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * a @ K @ a)

    cur = loss(a)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(K @ a)))
        r = (p - y) / n + l2 * a  # the gradient is K r
        if np.abs(K @ r).max() < 1e-9:
            break
        s = p * (1 - p) / n
        step = np.linalg.solve(s[:, None] * K + l2 * np.eye(n), -r)
        t = 1.0
        while (new := loss(a + t * step)) > cur and t > 1e-4:  # backtracking: Newton may overshoot
            t /= 2
        a, cur = a + t * step, new
    w = X.T @ a
    k = len(kept)
    det.weights, det.heuristic_weights = w[:k], w[k: k + len(HEURISTICS)]
    det.bias = float(w[-1] * _BIAS_SCALE)
    return det


_BIAS_SCALE = 10.0


def read_texts(path: str | Path) -> tuple[list[str], list[int], list[str]]:
    """(texts, labels 1 = injection, ids) of an injection JSONL file (`{"id", "text", "label"}` lines)."""
    def parse(obj: Any, n: int) -> tuple[str, int, str]:
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or obj.get("label") not in (
                "injection", "benign"):
            raise ValueError('expected {"text": "...", "label": "injection" | "benign"}')
        return obj["text"], int(obj["label"] == "injection"), str(obj.get("id", n))

    rows = jsonl.read(path, parse, what='a JSONL file of {"text", "label"} lines', error=InjectionModelError)[0]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def metrics(pred: list[bool] | np.ndarray, labels: list[int]) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of predictions (True = injection) against labels (1 = injection)."""
    pred, y = np.asarray(pred, dtype=bool), np.asarray(labels, dtype=bool)
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": float((pred == y).mean()),
            "n": len(y), "tp": tp, "fp": fp, "fn": fn}
