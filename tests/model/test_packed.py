"""The packed-model cache (corral.formats.packed): the first CPU load of a Q4 GGUF writes corral's repacked form, the
next one reads it back, with the same logits to the bit and the same tokenizer; a damaged entry or a cache that
cannot be written costs only speed."""

from __future__ import annotations

import logging

import pytest
import torch

from corral.model import kernels, loader
from corral.tokenizer import load_tokenizer

pytestmark = pytest.mark.skipif(not kernels.vnni(), reason="the packed form is corral's AVX-512 VNNI kernel layout")
IDS = [504, 2520, 6097, 260, 11302, 253, 1936, 1008, 2022]


def logits(lm):
    with torch.inference_mode():
        return lm.model(torch.tensor([IDS]))[0]


def test_a_second_load_reads_the_packed_form_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_CACHE_DIR", str(tmp_path))
    first = loader.load_model("default", device="cpu")
    files = sorted(p.name for p in (tmp_path / "packed").iterdir())
    assert len(files) == 1 and files[0].endswith(".safetensors")
    tok = load_tokenizer(first.path)  # builds from the GGUF, then caches
    parsed = []
    monkeypatch.setattr(loader, "_parse_gguf", lambda *a: parsed.append(a))
    second = loader.load_model("default", device="cpu")
    assert parsed == [] and second.quantized and second.model.decode_plan is not None
    assert torch.equal(logits(second), logits(first))
    cached_tok = load_tokenizer(first.path)
    text = "Name the capital city of France. <|im_end|> café 12345"
    assert cached_tok.encode(text) == tok.encode(text) and cached_tok.stop_ids == tok.stop_ids
    assert cached_tok.chat_template == tok.chat_template and cached_tok.decode(tok.encode(text)) == text


def test_a_damaged_entry_is_reloaded_and_an_unwritable_cache_only_costs_speed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CORRAL_CACHE_DIR", str(tmp_path))
    ref = logits(loader.load_model("default", device="cpu"))
    entry = next((tmp_path / "packed").iterdir())
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short
    with caplog.at_level(logging.WARNING):
        assert torch.equal(logits(loader.load_model("default", device="cpu")), ref)
    assert "unreadable" in caplog.text
    assert entry.stat().st_size > 1000  # rewritten
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("CORRAL_CACHE_DIR", str(blocked))
    assert torch.equal(logits(loader.load_model("default", device="cpu")), ref)
