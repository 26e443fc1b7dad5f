"""A SentencePiece (Llama 2 style) vocabulary embedded in a GGUF tokenizes as llama.cpp tokenizes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corral.tokenizer import load_tokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "hello", "world", "in", "and", "a", "is", "it", "to", "of"]
TEXTS = ["the cat sat on the mat", "Hello world", "  leading spaces and\nnewlines", "unknown ü 中 bytes 😀",
         "the theatre is in a cathedral", "it is to the end of it"]


def write_spm_gguf(path: Path) -> None:
    """A vocab-only llama GGUF: specials, 256 byte tokens, then pieces with scores (longer = merged later)."""
    gguf = pytest.importorskip("gguf", reason="gguf writes the test file")
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    pieces: list[str] = []
    for w in WORDS:
        s = "▁" + w
        for i in range(1, len(s) + 1):  # every prefix, so each word can be built by merges
            if s[:i] not in pieces:
                pieces.append(s[:i])
        for i in range(len(w)):
            if w[i] not in pieces:
                pieces.append(w[i])
    for c in "abcdefghijklmnopqrstuvwxyzH":
        if c not in pieces:
            pieces.append(c)
    for i, p in enumerate(sorted(pieces, key=lambda p: (len(p), p))):
        tokens.append(p)
        scores.append(-float(i))  # shorter pieces first: their merges rank higher
        types.append(1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
def test_spm_gguf_matches_llama_cpp(tmp_path: Path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference tokenizer (.[peers])")
    path = tmp_path / "spm.gguf"
    write_spm_gguf(path)
    ref = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    tok = load_tokenizer(path)
    assert tok.add_bos and tok.bos_id == 1 and 2 in tok.stop_ids
    for text in TEXTS:
        ours = tok.encode(text, add_bos=True)
        theirs = ref.tokenize(text.encode(), add_bos=True, special=False)
        assert ours == theirs, (text, ours, theirs)
        assert tok.decode(ours) == text, text
