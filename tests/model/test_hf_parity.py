"""corral's HF-folder loader and forward pass against transformers' `LlamaForCausalLM` (tiny random models).

The tiny model is Llama-3.1 shaped: GQA (4 heads, 2 KV heads), `llama3` rope scaling with a 64-token original
context, untied or tied embeddings. Sequences run to 80 positions, past the scaling's original context.
"""

from __future__ import annotations

import json

import pytest
import torch

from corral.model.llama import KVCache
from corral.model.loader import load_model

SEQ = 80
TOL = 1e-4


def random_ids(batch: int, length: int, vocab: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def corral_logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, **kwargs)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_logits_match_transformers(make_tiny_hf, tied):
    hf, folder = make_tiny_hf(tie_word_embeddings=tied)
    lm = load_model(str(folder), device="cpu", dtype="float32")
    assert lm.source == "hf" and not lm.quantized
    assert lm.config.rope_theta == 500000.0 and lm.config.rope_scaling["rope_type"] == "llama3"
    assert lm.config.tie_word_embeddings is tied
    if tied:
        assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    ids = random_ids(2, SEQ)
    ref, ours = hf_logits(hf, ids), corral_logits(lm.model, ids)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (2, SEQ, 256)
    diff = (ours - ref).abs().max().item()
    assert diff < TOL, f"max |corral - transformers| = {diff:.2e}"


def test_parity_is_sensitive_to_rope_scaling(make_tiny_hf):
    """Guard against a vacuous parity test: dropping the llama3 scaling must move the logits a lot."""
    hf, folder = make_tiny_hf()
    lm = load_model(str(folder), device="cpu", dtype="float32")
    lm.model.config.rope_scaling = None
    lm.model.reset_rope()
    ids = random_ids(1, SEQ)
    assert (corral_logits(lm.model, ids) - hf_logits(hf, ids)).abs().max().item() > 0.1


def test_transformers5_rope_parameters_layout(make_tiny_hf):
    hf, folder = make_tiny_hf(legacy=False)
    assert "rope_parameters" in json.loads((folder / "config.json").read_text())
    lm = load_model(str(folder), device="cpu", dtype="float32")
    ids = random_ids(1, SEQ)
    assert (corral_logits(lm.model, ids) - hf_logits(hf, ids)).abs().max().item() < TOL


def test_sharded_checkpoint_loads(make_tiny_hf):
    hf, folder = make_tiny_hf(save_kwargs={"max_shard_size": "100KB"})
    shards = sorted(folder.glob("model-*.safetensors"))
    assert (folder / "model.safetensors.index.json").exists() and len(shards) > 1
    lm = load_model(str(folder), device="cpu", dtype="float32")
    ids = random_ids(1, SEQ)
    assert (corral_logits(lm.model, ids) - hf_logits(hf, ids)).abs().max().item() < TOL


@pytest.fixture
def tiny(make_tiny_hf):
    _, folder = make_tiny_hf()
    return load_model(str(folder), device="cpu", dtype="float32").model


def test_kv_cache_incremental_decode_matches_full_forward(tiny):
    ids = random_ids(1, SEQ, seed=2)
    full = corral_logits(tiny, ids)
    cache = KVCache.allocate(tiny.config, 1, 128, torch.float32, "cpu")
    prefill = 48
    out = corral_logits(tiny, ids[:, :prefill], positions=torch.arange(prefill)[None], cache=cache, kv_len=prefill)
    assert (out - full[:, :prefill]).abs().max().item() < TOL
    for p in range(prefill, SEQ):
        # Alternate a tight kv_len with the whole buffer (unwritten entries masked by position).
        kv_len = p + 1 if p % 2 else None
        out = corral_logits(tiny, ids[:, p:p + 1], positions=torch.tensor([[p]]), cache=cache, kv_len=kv_len)
        diff = (out[:, 0] - full[:, p]).abs().max().item()
        assert diff < TOL, f"position {p}: max diff {diff:.2e}"


def test_kv_cache_batched_slots_at_different_positions(tiny):
    """Two sequences in swapped cache slots, prefilled separately, then decoded together at different positions."""
    a, b = random_ids(1, 70, seed=3), random_ids(1, 50, seed=4)
    full_a, full_b = corral_logits(tiny, a), corral_logits(tiny, b)
    cache = KVCache.allocate(tiny.config, 2, 128, torch.float32, "cpu")
    # a lives in slot 1, b in slot 0.
    out_a = corral_logits(tiny, a[:, :60], positions=torch.arange(60)[None], cache=cache, kv_len=60,
                          slots=torch.tensor([1]))
    out_b = corral_logits(tiny, b[:, :40], positions=torch.arange(40)[None], cache=cache, kv_len=40,
                          slots=torch.tensor([0]))
    assert (out_a - full_a[:, :60]).abs().max().item() < TOL
    assert (out_b - full_b[:, :40]).abs().max().item() < TOL
    for step in range(10):
        pa, pb = 60 + step, 40 + step
        ids = torch.cat([a[:, pa:pa + 1], b[:, pb:pb + 1]])  # (2, 1)
        out = corral_logits(tiny, ids, positions=torch.tensor([[pa], [pb]]), cache=cache, kv_len=pa + 1,
                            slots=torch.tensor([1, 0]))
        assert (out[0, 0] - full_a[0, pa]).abs().max().item() < TOL, f"row a at position {pa}"
        assert (out[1, 0] - full_b[0, pb]).abs().max().item() < TOL, f"row b at position {pb}"


def test_kv_cache_batched_rows_without_slots(tiny):
    """slots=None: row i is cache slot i; both rows prefilled in one ragged-free batch, then decoded."""
    ids = random_ids(2, SEQ, seed=5)
    full = corral_logits(tiny, ids)
    cache = KVCache.allocate(tiny.config, 2, 128, torch.float32, "cpu")
    corral_logits(tiny, ids[:, :64], positions=torch.arange(64).expand(2, 64), cache=cache, kv_len=64)
    for p in range(64, SEQ):
        out = corral_logits(tiny, ids[:, p:p + 1], positions=torch.full((2, 1), p), cache=cache, kv_len=p + 1)
        assert (out[:, 0] - full[:, p]).abs().max().item() < TOL
