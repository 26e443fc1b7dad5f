"""GGUF loading: corral against llama.cpp on the default model, and GGUF round trips of tiny random models.

Slow tests teacher-force the default SmolLM2-135M-Instruct Q4_1 GGUF through llama.cpp and corral on the same token
ids and compare the next-token distributions (top-1 agreement, mean KL(llama.cpp || corral)). Two llama.cpp
references: the Q4_1 file itself, and an F32 GGUF of its dequantized weights written here. llama.cpp multiplies Q4_1
weights by 8-bit-quantized activations, so on the Q4_1 file it disagrees with its own F32 run on ~5% of top-1 picks
(measured: 0.949 on the prose); corral's fp32 path must match the F32 run almost exactly and the Q4_1 run as closely
as llama.cpp matches itself.

Fast tests write tiny GGUFs with `gguf.GGUFWriter` the way llama.cpp's convert_hf_to_gguf.py does (Q/K rows
permuted, llama3 scaling as a `rope_freqs.weight` tensor) and check corral reads back the transformers model.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from corral.model.loader import load_model
from corral.registry import default_model_path

PROSE = """\
The ferry to Inishcarra leaves the mainland twice a day, once in the grey hour before breakfast and once in the \
late afternoon, when the light turns the water the colour of old pewter. For most of the year it carries more \
freight than people: crates of bread and milk, drums of diesel for the generator, a few sacks of post, and now and \
then a washing machine lashed upright to the rail like a nervous passenger. The crossing takes forty minutes in \
calm weather and considerably longer when the wind comes round to the west.

Maeve Doherty has run the island's only shop for nineteen years. She keeps a ledger in pencil, not because she \
distrusts computers but because the electricity fails whenever a storm takes down the line, and a ledger does not \
need charging. Her customers pay at the end of the month, or at the end of the season, or, in the case of the two \
fishermen who live at the northern end, whenever the mackerel are generous. She says the arrangement has never cost \
her more than it has saved, since people who owe you money also feel obliged to fix your roof.

The school closed eleven years ago, when the last family with young children moved to the town. The building is now \
used for dances in the summer, for the annual meeting of the harbour committee, and, on wet Thursdays, for a \
painting class run by a retired engineer who arrived to survey the pier and never quite left. His paintings are \
almost all of the same lighthouse, seen from slightly different angles, and he insists that no two of them are \
alike, because the sea behind it is never the same sea twice.

Visitors tend to come in July and August, walk the cliff path to the ruined chapel, photograph the puffins, and \
leave on the evening boat complaining that there was nothing to do. The islanders regard this as the highest \
possible compliment. What the visitors miss is the slow business of a place that has learned to expect delay: the \
way a conversation at the pier can last an hour because the boat is late, the way a borrowed ladder travels from \
house to house over a summer and returns, eventually, with a fresh coat of paint that nobody asked for.

In winter the population falls to thirty-one. The days are short, the post arrives when it can, and the shop \
stays open until the last person who wants something has come in for it. On clear nights there is no light on the \
island brighter than the lighthouse itself, and from the kitchen windows on the eastern side you can watch the \
beam sweep across the water, steady and patient, counting out the hours until the morning ferry."""

CHAT = [
    {"role": "system", "content": "You are a concise assistant who explains things to curious teenagers."},
    {"role": "user", "content": "Why does the sky look blue during the day but red at sunset?"},
    {"role": "assistant", "content": (
        "Sunlight contains every colour. Air molecules scatter short, blue wavelengths much more strongly than long, "
        "red ones, so during the day blue light reaches your eyes from every direction of the sky. At sunset the "
        "light crosses far more air before it reaches you, most of the blue is scattered away along the path, and "
        "the reds and oranges are what is left.")},
    {"role": "user", "content": "So would the sky on Mars look different? Give me two sentences."},
]

# (ours, reference) → (min top-1 agreement, max mean KL). Measured on this machine (2-core CPU), prose / chat:
#   fp32 vs llama.cpp F32   top-1 1.000 / 1.000, KL 7e-7 / 9e-7
#   fp32 vs llama.cpp Q4_1  top-1 0.949 / 0.964, KL 3.9e-3 / 3.0e-3  (llama.cpp Q4_1 vs its own F32 run: 0.949 too)
#   int4 vs llama.cpp F32   top-1 0.958 / 0.964, KL 2.2e-3 / 2.6e-3
#   int4 vs llama.cpp Q4_1  top-1 0.956 / 0.949, KL 3.5e-3 / 3.6e-3
# `int4` is what `load_model` gives on CPU: on VNNI CPUs corral's kernel, which quantizes activations to int8 per
# block of 32 as llama.cpp's Q4_1 matmuls do (before 2026-12-07 a loaded model ran PyTorch's int4 kernel with bf16
# activations until an engine switched it: 0.991 / 0.985, KL 2.6e-4 / 4.0e-4). Its bar against the F32 reference is
# llama.cpp's own Q4_1 run against its F32 run (top-1 0.949, KL 3.9e-3): at least as close as that.
BARS = {
    ("fp32", "llama_f32"): (0.99, 1e-4),
    ("fp32", "llama_q4"): (0.93, 0.01),
    ("int4", "llama_f32"): (0.949, 0.0039),
    ("int4", "llama_q4"): (0.93, 0.01),
}


def agreement(ref: torch.Tensor, ours: torch.Tensor) -> tuple[float, float, float]:
    """(top-1 agreement, mean KL(ref || ours), max KL) over positions; (T, V) logits."""
    lp, lq = torch.log_softmax(ref.double(), -1), torch.log_softmax(ours.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    top1 = (ref.argmax(-1) == ours.argmax(-1)).double().mean()
    return top1.item(), kl.mean().item(), kl.max().item()


# --- the default model against llama.cpp ----------------------------------------------------------------------


def dequantized_f32_copy(src, dst) -> None:
    """Write `src` GGUF again with every tensor dequantized to F32 and the same metadata (tokenizer included)."""
    import gguf
    from gguf import GGUFValueType

    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = 0 if key == "general.file_type" else field.contents()  # 0 = all F32
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, field.types[0], sub_type=sub)
    for t in reader.tensors:
        shape = tuple(reversed([int(x) for x in t.shape]))
        w.add_tensor(t.name, np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_cpp(path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference for GGUF parity")
    return llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)


@pytest.fixture(scope="module")
def llama_q4():
    return _llama_cpp(default_model_path())


@pytest.fixture(scope="module")
def llama_f32(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "smollm2-135m-f32.gguf"
    dequantized_f32_copy(default_model_path(), path)
    llm = _llama_cpp(path)
    yield llm
    llm.close()
    path.unlink()  # 540 MB: do not leave it to pytest's tmp rotation


@pytest.fixture(scope="module")
def corral_fp32():
    return load_model(None, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def corral_auto():
    return load_model(None, device="cpu", dtype="auto")


@pytest.fixture(scope="module")
def logits_cache() -> dict:
    return {}


@pytest.fixture(scope="module")
def prose_ids(tok):
    ids = tok.encode(PROSE)
    assert len(ids) >= 256
    return ids


@pytest.fixture(scope="module")
def chat_ids(tok):
    from corral.chat import encode_chat

    return encode_chat(tok, CHAT)


def llama_cpp_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))


def int4_layers(model) -> int:
    from corral.model.quant import Int4Linear

    return sum(isinstance(m, Int4Linear) for m in model.modules())


def corral_model_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["prose", "chat"])
@pytest.mark.parametrize(("ours", "ref"), list(BARS), ids=[f"{o}-vs-{r}" for o, r in BARS])
def test_default_model_matches_llama_cpp(ours, ref, which, request):
    ids = request.getfixturevalue(f"{which}_ids")
    lm = request.getfixturevalue(f"corral_{'fp32' if ours == 'fp32' else 'auto'}")
    if ours == "fp32":
        assert int4_layers(lm.model) == 0 and lm.model.dtype == torch.float32
    else:  # every projection of the 30 layers packed: 4 modules a layer when q/k/v and gate/up are fused, 7 if not
        assert int4_layers(lm.model) >= 4 * 30
    cache = request.getfixturevalue("logits_cache")  # each model runs each text once per module
    if (ref, which) not in cache:
        cache[ref, which] = llama_cpp_logits(request.getfixturevalue(ref), ids)
    if (ours, which) not in cache:
        cache[ours, which] = corral_model_logits(lm.model, ids)
    top1, kl, kl_max = agreement(cache[ref, which], cache[ours, which])
    min_top1, max_kl = BARS[ours, ref]
    figures = (f"corral {ours} vs {ref} on {which} ({len(ids)} tokens): top-1 {top1:.4f} (bar {min_top1}), "
               f"mean KL {kl:.2e} (bar {max_kl}), max KL {kl_max:.2e}")
    print("\n" + figures)
    assert top1 >= min_top1 and kl <= max_kl, figures


@pytest.mark.slow
@pytest.mark.parametrize("ours", ["fp32", "int4"])
def test_issue_bar_against_llama_cpp_q4(ours, request):
    """The bar as the issue states it, over all teacher-forced positions (>= 256 of prose, plus the chat prompt):
    top-1 >= 95% and mean KL(llama.cpp || corral) <= 0.01 nats against llama.cpp running the Q4_1 file itself.

    Per input (above) the prose alone lands at ~0.949 for fp32: llama.cpp's 8-bit activations flip ~5% of its own
    top-1 picks against its F32 run on that text, which corral's fp32 path matches exactly (KL ~7e-7)."""
    lm = request.getfixturevalue(f"corral_{'fp32' if ours == 'fp32' else 'auto'}")
    llm = request.getfixturevalue("llama_q4")
    refs, outs = [], []
    for which in ("prose", "chat"):
        ids = request.getfixturevalue(f"{which}_ids")
        refs.append(llama_cpp_logits(llm, ids))
        outs.append(corral_model_logits(lm.model, ids))
    top1, kl, _ = agreement(torch.cat(refs), torch.cat(outs))
    figures = f"corral {ours} vs llama.cpp Q4_1, {sum(len(r) for r in refs)} positions: top-1 {top1:.4f}, KL {kl:.2e}"
    print("\n" + figures)
    assert top1 >= 0.95 and kl <= 0.01, figures


# --- tiny GGUF round trips --------------------------------------------------------------------------------------

GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows → llama.cpp's interleaved pairs, as convert_hf_to_gguf.py's `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg) -> np.ndarray:
    """The `rope_freqs.weight` divisors convert_hf_to_gguf.py writes for rope_type llama3."""
    rope = cfg.rope_parameters
    hd, theta, factor = cfg.head_dim, rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    out = []
    for inv in 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd):
        wavelen = 2 * math.pi / inv
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# K-quant blocks the gguf package cannot quantize: random codes with valid fp16 scales at these byte offsets.
K_QUANT_SCALES = {"Q6_K": (208,), "Q4_K": (0, 2)}


def random_k_quant(rows: int, cols: int, kind: str, seed: int = 0) -> np.ndarray:
    """(rows, bytes) of valid `kind` blocks (super-blocks of 256 weights) with random codes and small scales."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, kind)]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for off in K_QUANT_SCALES[kind]:
        raw[..., off:off + 2] = np.array([1e-4], dtype=np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def write_tiny_gguf(path, hf_model, qtype: str = "F32", embd_qtype: str | None = None,
                    output_qtype: str | None = None) -> dict[str, torch.Tensor]:
    """Write `hf_model` as a llama GGUF; 2-D weights in `qtype` (token_embd in `embd_qtype`, output in
    `output_qtype`, default the same). A K-quant output holds random blocks (see `random_k_quant`).

    Returns the weights the file actually holds, in HF names and layout (dequantized), for a reference model.
    """
    import gguf
    from gguf import GGMLQuantizationType as QT

    cfg = hf_model.config
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    if cfg.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    held: dict[str, torch.Tensor] = {}

    def put(gguf_name: str, hf_name: str, heads: int = 0, kind: str = qtype) -> None:
        a = sd[hf_name]
        if a.ndim == 1:  # norms stay F32, as llama.cpp keeps them
            w.add_tensor(gguf_name, a)
            held[hf_name] = torch.from_numpy(a)
            return
        stored = np.ascontiguousarray(permute_qk(a, heads) if heads else a)
        if kind in K_QUANT_SCALES:
            q = getattr(QT, kind)
            raw = random_k_quant(*a.shape, kind)
            w.add_tensor(gguf_name, raw, raw_dtype=q)
            held[hf_name] = torch.from_numpy(gguf.quants.dequantize(raw, q).reshape(a.shape))
        elif kind == "F32":
            w.add_tensor(gguf_name, stored)
            held[hf_name] = torch.from_numpy(a)
        elif kind == "F16":
            w.add_tensor(gguf_name, stored.astype(np.float16))
            held[hf_name] = torch.from_numpy(a.astype(np.float16).astype(np.float32))
        else:
            q = getattr(QT, kind)
            w.add_tensor(gguf_name, gguf.quants.quantize(stored, q), raw_dtype=q)
            # Blocks run along a row, so quantizing the permuted rows equals permuting the quantized ones.
            held[hf_name] = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, q), q))

    put("token_embd.weight", "model.embed_tokens.weight", kind=embd_qtype or qtype)
    for i in range(cfg.num_hidden_layers):
        for hf_part, gguf_part in GGUF_LAYER_NAMES.items():
            heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}.get(gguf_part, 0)
            put(f"blk.{i}.{gguf_part}.weight", f"model.layers.{i}.{hf_part}.weight", heads)
    put("output_norm.weight", "model.norm.weight")
    if not cfg.tie_word_embeddings:
        put("output.weight", "lm_head.weight", kind=output_qtype or qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def reference_logits(hf_model, held: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """transformers' logits with the weights the GGUF holds."""
    ref = copy.deepcopy(hf_model)
    ref.load_state_dict(held, strict=False)
    with torch.no_grad():
        return ref(ids).logits.float()


def tiny_ids(length: int = 80) -> torch.Tensor:
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(7))


def logits_of(lm, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(ids)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("qtype", ["F32", "F16"])
def test_gguf_round_trip_float(make_tiny_hf, tmp_path, qtype, tied):
    hf, folder = make_tiny_hf(tie_word_embeddings=tied)
    held = write_tiny_gguf(tmp_path / "tiny.gguf", hf, qtype)
    lm = load_model(str(tmp_path / "tiny.gguf"), device="cpu", dtype="float32")
    assert lm.source == "gguf" and not lm.quantized and lm.config.tie_word_embeddings is tied
    ids = tiny_ids()
    ours = logits_of(lm, ids)
    diff = (ours - reference_logits(hf, held, ids)).abs().max().item()
    assert diff < 1e-4, f"GGUF {qtype} vs transformers: max diff {diff:.2e}"
    if qtype == "F32":  # the same weights through corral's HF-folder loader
        from_hf = logits_of(load_model(str(folder), device="cpu", dtype="float32"), ids)
        assert (ours - from_hf).abs().max().item() < 1e-4


def test_gguf_round_trip_without_rope_freqs_is_sensitive(make_tiny_hf, tmp_path):
    """The llama3 scaling reaches corral only through `rope_freqs.weight`: without it the logits move."""
    hf, _ = make_tiny_hf(rope_scaling=None)
    held = write_tiny_gguf(tmp_path / "plain.gguf", hf)
    lm = load_model(str(tmp_path / "plain.gguf"), device="cpu", dtype="float32")
    ids = tiny_ids()
    assert (logits_of(lm, ids) - reference_logits(hf, held, ids)).abs().max().item() < 1e-4
    scaled, _ = make_tiny_hf(name="scaled")
    assert (logits_of(lm, ids) - reference_logits(scaled, held, ids)).abs().max().item() > 0.1


@pytest.mark.parametrize("qtype", ["BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1"])
def test_gguf_quantized_dequantizes_exactly(make_tiny_hf, tmp_path, qtype):
    """dtype=float32 dequantizes every block: the result is the transformers model with the dequantized weights."""
    hf, _ = make_tiny_hf()
    held = write_tiny_gguf(tmp_path / f"{qtype}.gguf", hf, qtype)
    lm = load_model(str(tmp_path / f"{qtype}.gguf"), device="cpu", dtype="float32")
    assert not lm.quantized
    ids = tiny_ids()
    diff = (logits_of(lm, ids) - reference_logits(hf, held, ids)).abs().max().item()
    assert diff < 1e-4, f"{qtype} dequantized: max diff {diff:.2e}"


@pytest.mark.parametrize("kind", ["Q6_K", "Q4_K"])
def test_gguf_k_quant_output_layer(make_tiny_hf, tmp_path, kind):
    """K-quants (llama.cpp's Q4_K_M files keep output.weight in Q6_K) load through gguf's dequantizer."""
    hf, _ = make_tiny_hf(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                         intermediate_size=512)
    held = write_tiny_gguf(tmp_path / f"{kind}.gguf", hf, "Q8_0", output_qtype=kind)
    for dtype in ("float32", "auto"):
        lm = load_model(str(tmp_path / f"{kind}.gguf"), device="cpu", dtype=dtype)
        ids = tiny_ids()
        ref = reference_logits(hf, held, ids)
        diff = (logits_of(lm, ids) - ref).abs().max().item()
        assert ref.abs().max() > 1, "the random output layer must produce logits that matter"
        assert diff < 1e-4, f"{kind} output layer, dtype {dtype}: max diff {diff:.2e}"


# Q4 tiny models are 128 wide: see test_gguf_q4_int4_path_with_64_row_weights for 64.
Q4_TINY = dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=256)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_gguf_q4_packed_int4_path(make_tiny_hf, tmp_path, qtype):
    """dtype=auto keeps Q4 weights packed: close to the dequantized reference, not equal (bf16 inside the kernel).

    token_embd is Q8_0, as in llama.cpp's own Q4 files of tied models (a Q4 one is tested below)."""
    hf, _ = make_tiny_hf(**Q4_TINY)
    held = write_tiny_gguf(tmp_path / f"{qtype}.gguf", hf, qtype, embd_qtype="Q8_0")
    lm = load_model(str(tmp_path / f"{qtype}.gguf"), device="cpu", dtype="auto")
    assert int4_layers(lm.model) > 0
    ids = tiny_ids()
    ref = reference_logits(hf, held, ids)[0]
    top1, kl, _ = agreement(ref, logits_of(lm, ids)[0])
    assert top1 >= 0.9 and kl <= 0.02, f"{qtype} int4 vs dequantized reference: top-1 {top1:.3f}, KL {kl:.4f}"
    # dtype=float32 on the same file: no packed layers.
    assert int4_layers(load_model(str(tmp_path / f"{qtype}.gguf"), device="cpu", dtype="float32").model) == 0


def test_loaded_model_reports_quantized(make_tiny_hf, tmp_path):
    hf, _ = make_tiny_hf(**Q4_TINY)
    write_tiny_gguf(tmp_path / "q4.gguf", hf, "Q4_0", embd_qtype="Q8_0")
    lm = load_model(str(tmp_path / "q4.gguf"), device="cpu", dtype="auto")
    assert int4_layers(lm.model) > 0
    assert lm.quantized


def test_gguf_q4_int4_path_with_64_row_weights(make_tiny_hf, tmp_path):
    hf, _ = make_tiny_hf()  # hidden 64: o_proj and down_proj have 64 rows
    held = write_tiny_gguf(tmp_path / "q4.gguf", hf, "Q4_0", embd_qtype="Q8_0")
    lm = load_model(str(tmp_path / "q4.gguf"), device="cpu", dtype="auto")
    ids = tiny_ids()
    top1, _, _ = agreement(reference_logits(hf, held, ids)[0], logits_of(lm, ids)[0])
    assert top1 >= 0.9


def test_gguf_q4_token_embedding_with_int4_path(make_tiny_hf, tmp_path):
    hf, _ = make_tiny_hf(**Q4_TINY)
    held = write_tiny_gguf(tmp_path / "q4_embd.gguf", hf, "Q4_0")
    lm = load_model(str(tmp_path / "q4_embd.gguf"), device="cpu", dtype="auto")
    ids = tiny_ids()
    top1, _, _ = agreement(reference_logits(hf, held, ids)[0], logits_of(lm, ids)[0])
    assert top1 >= 0.9
