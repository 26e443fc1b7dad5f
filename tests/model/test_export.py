"""`corral export --format gguf`: llama.cpp runs what corral writes, with corral's logits, tokenizer and template.

Fast tests use a tiny random Llama (conftest's TINY_LLAMA: hidden 64, 4 heads, 2 KV heads, head_dim 16, Llama 3.1
rope scaling) with the default model's real 49152-token vocabulary, so that llama.cpp gets a tokenizer it knows and
the tokenization can be compared. The reference for a quantized export is corral's own forward of the source with
every weight rounded as the file stores it (`as_exported`): built from the source, not from the file, so a wrong
Q/K permutation or tensor in the file shows. What remains between llama.cpp and that reference is llama.cpp's
arithmetic: f16 activations beside F16 weights, 8-bit-quantized activations beside Q8_0/Q4_0 ones.

Measured here (max |diff| over the reference logits' std, 53 positions), llama.cpp against `as_exported`, untied /
tied: f32 0.009 / 0.007, f16 0.010 / 0.010, q8_0 0.17 / 0.19, q4_0 0.26 / 0.17, correlation >= 0.9995 in all; with
the writer's Q/K permutation left out: 6.5 to 6.9 in all (correlation 0.47). Against the unrounded source q4_0 alone
moves these peaky random logits by 3.4 to 4.9 std: quantization itself, so the bars are set against `as_exported`.
A second check needs no tolerance: q8_0/q4_0 exports of an f16 GGUF are byte for byte what llama.cpp's own
`llama_model_quantize` makes of it.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from corral.cli import main
from corral.formats.gguf import GGUFFile, export_type, gguf_name
from corral.model.loader import load_model
from corral.model.lora import apply_lora, save_adapter
from corral.tokenizer import LLAMA3_PATTERN
from tests.cli.test_cli import run_cli
from tests.formats.test_gguf_parity import PROSE, agreement
from tests.test_tokenizer import TEXTS

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference for GGUF export")
gguf = pytest.importorskip("gguf")

# max |llama.cpp - reference| / std(reference), and the least correlation, per export type (measured: see above)
BARS = {"f32": (0.05, 0.9999), "f16": (0.08, 0.9999), "q8_0": (0.6, 0.999), "q4_0": (0.6, 0.999)}
TEXT = ("The cat sat on the mat, 12345 times; then it said: I'm done!\n\nNext day the dog came home, "
        "tired and hungry, and asked the cat whether any of the fish from the market was left for him.")


def tiny_folder(make_tiny_hf, tok, name: str = "tiny", pre_tokenizer: dict | None = None, **overrides):
    """A tiny random HF folder with the default model's tokenizer.json, and a tokenizer_config.json with its chat
    template and special tokens, as the SmolLM2 HF repository has them."""
    _, folder = make_tiny_hf(name=name, **{"vocab_size": tok.vocab_size, **overrides})
    data = json.loads(tok._tok.to_str())
    if pre_tokenizer is not None:
        data["pre_tokenizer"] = pre_tokenizer
    (folder / "tokenizer.json").write_text(json.dumps(data))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": tok.chat_template, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_bos_token": False}))
    return folder


def export(*args: str) -> None:
    assert main(["export", *args]) == 0


def llama(path, vocab_only: bool = False):
    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, logits_all=True, vocab_only=vocab_only,
                           verbose=False)


def llama_logits(path, ids: list[int]) -> torch.Tensor:
    llm = llama(path)
    llm.eval(ids)
    out = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return out


def corral_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0].float()


def as_exported(lm, quant: str):
    """A copy of the loaded model with every weight rounded to the type the export stores it in (blocks run
    along rows, so rounding before or after the Q/K permutation is the same)."""
    model = copy.deepcopy(lm.model)
    tied = lm.config.tie_word_embeddings
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            kind = export_type(gguf_name(name), tuple(t.shape), quant, tied)
            a = t.numpy()
            t.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, kind), kind).reshape(a.shape)))
    return model


def spread(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |ours - ref| / std(ref), correlation) over all logits."""
    corr = np.corrcoef(ours.flatten().numpy(), ref.flatten().numpy())[0, 1]
    return ((ours - ref).abs().max() / ref.std()).item(), float(corr)


def check_close(ours: torch.Tensor, ref: torch.Tensor, quant: str, what: str) -> None:
    rel, corr = spread(ours, ref)
    max_rel, min_corr = BARS[quant]
    assert rel < max_rel and corr > min_corr, f"{what} ({quant}): max diff {rel:.3f} std, correlation {corr:.6f}"


@pytest.mark.parametrize(("quant", "tied"), [("f16", False), ("q8_0", False), ("q4_0", False), ("q4_0", True),
                                             ("f32", True)])
def test_llama_cpp_runs_the_export_with_corrals_logits(make_tiny_hf, tok, tmp_path, quant, tied):
    folder = tiny_folder(make_tiny_hf, tok, tie_word_embeddings=tied)
    out = tmp_path / f"tiny.{quant}.gguf"
    export(str(folder), "--out", str(out), "--quant", quant)
    ids = tok.encode(TEXT)
    assert len(ids) >= 40
    src = load_model(str(folder), device="cpu", dtype="float32")
    ref = corral_logits(as_exported(src, quant), ids)
    theirs = llama_logits(out, ids)
    check_close(theirs, ref, quant, "llama.cpp vs corral")
    if quant in ("f16", "f32"):  # float exports are close to the unrounded source too
        check_close(theirs, corral_logits(src.model, ids), quant, "llama.cpp vs the source")
    back = load_model(str(out), device="cpu", dtype="float32")  # corral reads back exactly what it wrote
    assert (corral_logits(back.model, ids) - ref).abs().max().item() < 1e-3

    # The types llama.cpp's quantize would pick (see export_type), and the Llama 3.1 scaling as rope_freqs.
    g = GGUFFile(out)
    types = {t.name: gguf.GGMLQuantizationType(t.qtype).name for t in g.tensor_infos}
    assert ("output.weight" in types) is not tied
    assert types["rope_freqs.weight"] == types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    matrix = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quant]
    assert types["blk.1.attn_q.weight"] == types["blk.1.ffn_down.weight"] == matrix
    head = "output.weight" if not tied else "token_embd.weight"
    assert types[head] == ("Q8_0" if quant == "q4_0" else matrix)
    assert g.metadata["general.file_type"] == {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}[quant]


@pytest.mark.parametrize(("quant", "ftype"), [("q8_0", 7), ("q4_0", 2)])
def test_quantized_exports_equal_llama_cpps_own_quantize(make_tiny_hf, tok, tmp_path, quant, ftype):
    import ctypes

    folder = tiny_folder(make_tiny_hf, tok)
    f16, ours, theirs = tmp_path / "tiny.f16.gguf", tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    export(str(folder), "--out", str(f16), "--quant", "f16")
    export(str(f16), "--out", str(ours), "--quant", quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a, b = GGUFFile(ours), GGUFFile(theirs)
    assert a.metadata == b.metadata and a.value_types == b.value_types
    ta, tb = {t.name: t for t in a.tensor_infos}, {t.name: t for t in b.tensor_infos}
    assert ta.keys() == tb.keys()
    for name, t in ta.items():
        u = tb[name]
        assert (t.qtype, t.shape) == (u.qtype, u.shape), name
        assert np.array_equal(a._mm[t.offset:t.offset + t.n_bytes], b._mm[u.offset:u.offset + u.n_bytes]), name


def test_a_wrong_qk_permutation_is_caught(make_tiny_hf, tok, tmp_path, monkeypatch):
    """The q4_0 bar (the loosest) fails when the writer skips the Q/K permutation: the bars are not too loose."""
    import corral.formats.gguf as formats_gguf

    folder = tiny_folder(make_tiny_hf, tok)
    monkeypatch.setattr(formats_gguf, "permute_qk", lambda w, n_head: w)
    export(str(folder), "--out", str(tmp_path / "wrong.gguf"), "--quant", "q4_0")
    ids = tok.encode(TEXT)
    ref = corral_logits(as_exported(load_model(str(folder), device="cpu", dtype="float32"), "q4_0"), ids)
    rel, corr = spread(llama_logits(tmp_path / "wrong.gguf", ids), ref)
    assert rel > 3 * BARS["q4_0"][0] and corr < 0.9, (rel, corr)


# Pre-tokenizers as HF tokenizer.json files write them, and the llama.cpp name the export must pick for each.
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "gpt2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
}


@pytest.mark.parametrize("pre", ["as-corral-writes-it", *PRE_TOKENIZERS])
def test_tokenizer_and_chat_template_survive(make_tiny_hf, tok, tmp_path, pre):
    from corral.tokenizer import load_tokenizer

    folder = tiny_folder(make_tiny_hf, tok, pre_tokenizer=PRE_TOKENIZERS.get(pre))
    if pre == "llama-bpe":  # Llama 3's tokenizer.json looks words up whole before merging, as llama.cpp does
        data = json.loads((folder / "tokenizer.json").read_text())
        data["model"]["ignore_merges"] = True
        (folder / "tokenizer.json").write_text(json.dumps(data))
    out = tmp_path / "tiny.gguf"
    export(str(folder), "--out", str(out), "--quant", "q8_0")
    md = GGUFFile(out).metadata
    # This vocabulary has no multi-digit tokens, so gpt2's digit runs and smollm's single digits split alike.
    assert md["tokenizer.ggml.pre"] in {"gpt2": ("gpt2", "smollm"), "llama-bpe": ("llama-bpe",)}.get(pre, ("smollm",))
    src = load_tokenizer(folder)
    llm = llama(out, vocab_only=True)
    assert llm.metadata["tokenizer.chat_template"] == src.chat_template == tok.chat_template
    assert (llm.token_bos(), llm.token_eos()) == (src.bos_id, src.eos_id) == (1, 2)
    assert md["tokenizer.ggml.padding_token_id"] == 2 and md["tokenizer.ggml.add_bos_token"] is False
    for name, text in TEXTS.items():
        for special in (False, True):
            got = llm.tokenize(text.encode(), add_bos=False, special=special)
            assert got == src.encode(text, special=special), (name, special)


def test_an_unknown_pre_tokenizer_is_refused(make_tiny_hf, tok, tmp_path, capsys):
    folder = tiny_folder(make_tiny_hf, tok, pre_tokenizer={"type": "Whitespace"})
    assert main(["export", str(folder), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "pre-tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.part").exists()


def test_tokenizers_the_export_cannot_write_are_refused(tiktoken_dir, tmp_path):
    from tokenizers import Tokenizer, decoders, models

    from corral.errors import TokenizerError
    from corral.tokenizer import gguf_vocab

    with pytest.raises(TokenizerError, match="needs the model's tokenizer.json"):
        gguf_vocab(tiktoken_dir, 512)
    spm = Tokenizer(models.BPE({"<unk>": 0, "▁": 1, "a": 2, "▁a": 3}, [("▁", "a")], unk_token="<unk>",
                               byte_fallback=True))
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "tokenizer.json").write_text(spm.to_str())
    with pytest.raises(TokenizerError, match="SentencePiece style"):
        gguf_vocab(tmp_path / "spm", 32)


def test_an_embedding_bigger_than_the_vocabulary_is_padded(make_tiny_hf, tok, tmp_path):
    """As convert_hf_to_gguf.py: `[PADn]` entries of type UNUSED up to the embedding's rows, which llama.cpp needs."""
    folder = tiny_folder(make_tiny_hf, tok, vocab_size=tok.vocab_size + 32)
    out = tmp_path / "padded.gguf"
    export(str(folder), "--out", str(out), "--quant", "f16")
    g = GGUFFile(out)
    tokens, types = g.metadata["tokenizer.ggml.tokens"], g.metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == g.metadata["llama.vocab_size"] == tok.vocab_size + 32
    assert tokens[-1] == f"[PAD{tok.vocab_size + 31}]" and set(types[tok.vocab_size:]) == {5}
    ids = tok.encode(TEXT)
    ref = corral_logits(load_model(str(folder), device="cpu", dtype="float32").model, ids)
    check_close(llama_logits(out, ids), ref, "f16", "llama.cpp vs corral, padded vocabulary")


def test_a_gguf_source_keeps_its_tokenizer_keys(make_tiny_hf, tok, tmp_path):
    """GGUF → GGUF: the tokenizer.* keys are copied with their types; the weights requantized from the source."""
    folder = tiny_folder(make_tiny_hf, tok)
    first, second = tmp_path / "tiny.f16.gguf", tmp_path / "tiny.q8_0.gguf"
    export(str(folder), "--out", str(first), "--quant", "f16")
    export(str(first), "--out", str(second), "--quant", "q8_0")
    a, b = GGUFFile(first), GGUFFile(second)
    for key in (k for k in a.metadata if k.startswith("tokenizer.")):
        assert b.metadata[key] == a.metadata[key] and b.value_types[key] == a.value_types[key], key
    assert b.metadata["general.name"] == "tiny"
    ids = tok.encode(TEXT)
    ref = corral_logits(as_exported(load_model(str(first), device="cpu", dtype="float32"), "q8_0"), ids)
    check_close(llama_logits(second, ids), ref, "q8_0", "llama.cpp vs corral on a GGUF source")


def test_adapter_merged_then_exported(make_tiny_hf, tok, tmp_path):
    """`--adapter` and a `corral merge` folder export the same model, and llama.cpp runs it with the merged
    logits (not the base's)."""
    from tests.model.test_lora import randomize_lora

    folder = tiny_folder(make_tiny_hf, tok)
    model = load_model(str(folder), device="cpu", dtype="float32").model
    base_ids = tok.encode(TEXT)
    base = corral_logits(model, base_ids)
    apply_lora(model, r=4, alpha=8)
    randomize_lora(model)
    merged = corral_logits(model, base_ids)
    save_adapter(model, tmp_path / "adapter")
    export(str(folder), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "a.gguf"), "--quant", "f16")
    assert main(["merge", str(folder), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    export(str(tmp_path / "merged"), "--out", str(tmp_path / "m.gguf"), "--quant", "f16")
    for path in (tmp_path / "a.gguf", tmp_path / "m.gguf"):
        theirs = llama_logits(path, base_ids)
        check_close(theirs, merged, "f16", f"llama.cpp on {path.name} vs the merged model")
        assert spread(theirs, base)[0] > 10 * BARS["f16"][0]  # the adapter is in the file


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"old")
    cases = [(["--format", "safetensors"], "corral merge"), (["--quant", "q5_k"], "f16, q8_0, q4_0"),
             ([], "exists; pass --force"), (["--out", str(tmp_path / "no" / "x.gguf")], "does not exist"),
             (["--out", str(tmp_path)], "is a folder")]
    for extra, needle in cases:
        args = ["export", "/no/such/model.gguf", "--out", str(out), *extra]
        assert main(args) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("corral: error:") and needle in err[0], (extra, err)
    assert out.read_bytes() == b"old"
    assert main(["export", "/no/such/model.gguf", "--out", str(out), "--force"]) == 2
    assert "no such file" in capsys.readouterr().err and out.read_bytes() == b"old"


# --- the default model --------------------------------------------------------------------------------------------

# Top-1 agreement of llama.cpp on the export with corral's fp32 run of the source (the SmolLM2-135M Q4_1 file), and
# mean KL(llama.cpp || corral), over test_gguf_parity's prose (546 tokens). Measured on this machine:
#   q8_0 (138 MiB): top-1 0.945, KL 4.2e-3 (llama.cpp on the Q4_1 file itself: 0.949, 3.9e-3; its 8-bit activations)
#   q4_0 (87.5 MiB): top-1 0.700, KL 0.33 (4-bit weights rounded again to another 4-bit grid; llama.cpp's own
#   quantize of an f16 export gives the same bytes)
DEFAULT_BARS = {"q8_0": (0.92, 0.01), "q4_0": (0.62, 0.5)}


@pytest.mark.slow
@pytest.mark.parametrize("quant", list(DEFAULT_BARS))
def test_default_model_export_runs_in_llama_cpp(tok, tmp_path, quant):
    out = tmp_path / f"smollm2.{quant}.gguf"
    r = run_cli("export", "default", "--out", str(out), "--quant", quant)
    assert r.returncode == 0, r.stderr
    ids = tok.encode(PROSE)
    theirs = llama_logits(out, ids)
    ours = corral_logits(load_model(None, device="cpu", dtype="float32").model, ids)
    top1, kl, _ = agreement(theirs, ours)
    print(f"\nllama.cpp on the {quant} export vs corral fp32, {len(ids)} tokens: top-1 {top1:.4f}, KL {kl:.2e}, "
          f"{out.stat().st_size / 2**20:.1f} MiB")
    min_top1, max_kl = DEFAULT_BARS[quant]
    assert top1 >= min_top1 and kl <= max_kl
    llm = llama(out, vocab_only=True)
    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    assert llm.tokenize(PROSE.encode(), add_bos=False, special=False) == ids
    out.unlink()
