"""Shared fixtures: tiny random-weight Llama models (HF folders, via transformers) and a tiny Llama 3 tiktoken folder.

Everything is built in the test's tmp folder from a fixed seed; nothing comes from a model hub.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
# No test may reach the network: corral's socket guard in this process and every Python subprocess (corral/egress.py);
# pytester runs the guard's own tests in a fresh pytest.
pytest_plugins = ["corral.egress", "pytester"]
# The packed-model cache (corral.formats.packed) of this test run: out of the user's home, and shared by the CLI
# subprocesses the tests start.
os.environ["CORRAL_CACHE_DIR"] = tempfile.mkdtemp(prefix="corral-test-cache-")

# Llama 3.1's rope scaling, with a tiny original context so that positions past 64 exercise all three bands
# (head_dim 16 and theta 5e5 give one unscaled, one smoothed and six fully scaled frequencies).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
# initializer_range 0.2 (not 0.02) makes attention peaky, so a wrong RoPE or mask moves the logits by whole units.
TINY_LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=500000.0,
                  rms_norm_eps=1e-5, initializer_range=0.2, rope_scaling=LLAMA3_SCALING, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)


def to_legacy_rope_layout(folder: Path) -> None:
    """Rewrite a transformers-5 `config.json` (`rope_parameters`) in the layout of transformers 4 and of the
    published Llama 3.x checkpoints: top-level `rope_theta` and `rope_scaling`."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    path.write_text(json.dumps(cfg, indent=2))


@pytest.fixture(autouse=True)
def _sft_runs_eager(request, monkeypatch):
    """`corral finetune` compiles its layers by default (TASK_DEFAULTS); the tests' hundreds of tiny runs stay eager
    (a compile costs more than a tiny run), except where a test asks for compile or is marked `real_defaults`.
    Tests that start `corral finetune` in a subprocess pass --no-compile themselves."""
    if request.node.get_closest_marker("real_defaults") is None:
        from corral.train.config import TASK_DEFAULTS

        monkeypatch.setitem(TASK_DEFAULTS["sft"], "compile", False)


@pytest.fixture(scope="session")
def tok():
    """The default model's tokenizer (from its GGUF), shared by every test that needs it."""
    from corral.registry import default_model_path
    from corral.tokenizer import load_tokenizer

    return load_tokenizer(default_model_path())


@pytest.fixture
def make_tiny_hf(tmp_path):
    """Factory: `make_tiny_hf(name="hf", legacy=True, save_kwargs=None, **config_overrides)` → (hf_model, folder).

    The model is transformers' `LlamaForCausalLM` in eval mode, seeded with 0; the folder holds its
    `save_pretrained` output (safetensors), by default rewritten to the legacy rope layout (see above).
    """
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for HF parity")

    def make(name: str = "hf", legacy: bool = True, save_kwargs: dict | None = None, **overrides):
        cfg = transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg).eval()
        folder = tmp_path / name
        model.save_pretrained(folder, **(save_kwargs or {}))
        if legacy:
            to_legacy_rope_layout(folder)
        return model, folder

    return make


# --- a tiny Llama 3 style tiktoken `tokenizer.model` ------------------------------------------------------------

TIKTOKEN_CORPUS = (
    "the cat sat on the mat and the dog sat on the log; then the cat and the dog went to the market "
    "where they bought the thing that they wanted. hello world, hello there, the weather is nice. "
    "I'm sure they're here and we've seen it. def main(): return the_value + 1"
)


def train_bpe_ranks(corpus: str, n_merges: int) -> dict[bytes, int]:
    """A tiny byte-level BPE: the 256 bytes get ranks 0..255, then each merge of the currently most frequent
    adjacent pair gets the next rank. Every merged token is thus two lower-ranked tokens, as tiktoken expects."""
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(tuple(bytes([c]) for c in w.encode()) for w in re.findall(r" ?\w+|[^\w\s]+|\s+", corpus))
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:], strict=False):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged: Counter = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return ranks


def write_tiktoken_file(path: Path, ranks: dict[bytes, int]) -> None:
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def write_tiktoken_model():
    """`write(path, n_merges)`: a tiktoken `tokenizer.model` of the 256 bytes plus `n_merges` merges."""
    return lambda path, n_merges: write_tiktoken_file(path, train_bpe_ranks(TIKTOKEN_CORPUS, n_merges))


@pytest.fixture
def tiktoken_dir(tmp_path, monkeypatch, write_tiktoken_model):
    """A folder with only a tiktoken `tokenizer.model` (256 bytes + 40 merges); tiktoken's file cache is kept in
    tmp_path so the tests leave nothing in /tmp/data-gym-cache."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    folder = tmp_path / "tiktoken-model"
    folder.mkdir()
    write_tiktoken_model(folder / "tokenizer.model", 40)
    return folder


@pytest.fixture
def make_tiny_chat(make_tiny_hf, tok):
    """Factory: a tiny random Llama over the default model's vocabulary, with its tokenizer.json and chat template
    (`**overrides` change the config); the training, eval, synth and distill tests build on it."""

    def make(name: str = "tiny-chat", **overrides):
        _, folder = make_tiny_hf(name=name, vocab_size=tok.vocab_size, **overrides)
        (folder / "tokenizer.json").write_text(tok._tok.to_str())
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "chat_template": tok.chat_template, "eos_token": tok.eos_token, "bos_token": tok.bos_token}))
        return folder
    return make


@pytest.fixture
def tiny_guard_dir(make_tiny_chat):
    """A tiny chat model folder with room for Llama Guard prompts (test_guard*.py)."""
    return make_tiny_chat("tiny-guard", max_position_embeddings=1024)


@pytest.fixture
def tiny_chat(make_tiny_chat):
    """A tiny random Llama over the default model's vocabulary, with its tokenizer and chat template."""
    return make_tiny_chat()
