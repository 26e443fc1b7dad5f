"""`load_model(path_or_name, adapter=...)`: the one entry point for HF folders and GGUF files, by path or registry
name, with a PEFT LoRA adapter merged in where one is given (or where the path is an adapter folder: its base model,
from adapter_config.json). Every command that loads a model goes through it.

The model is built on the meta device and the weights are assigned (`load_state_dict(assign=True)`), so an HF
safetensors file of the target dtype is used in place, memory-mapped, without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corral.config import ModelConfig
from corral.errors import InvalidArgumentError, ModelFormatError
from corral.formats import hf
from corral.formats.gguf import GGUFFile, Q4Tensor
from corral.model import kernels
from corral.model.llama import LlamaForCausalLM

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: ModelConfig
    path: Path
    source: str  # "gguf" or "hf"
    quantized: bool  # 4-bit weights kept packed (Int4Linear)
    merged: int = 0  # LoRA layers of an adapter folded into the weights


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgumentError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"--device {device!r}: expected auto, cpu or cuda[:N]")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, source_is_q4: bool = False) -> tuple[torch.dtype, bool]:
    """(activation dtype, keep 4-bit weights packed). `auto`: a Q4 GGUF runs packed 4-bit; other models bf16.
    On CPU the activations stay fp32 either way (the int4 kernel takes bf16 and converts at its edge): bf16
    elementwise ops and small bf16 bmm's are slower than fp32 on CPUs (measured: 10.3 vs 9.4 ms a decode step).
    `int4` forces the packed path (Q4 GGUFs only)."""
    act = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "auto":
        return act, source_is_q4
    if dtype == "int4":
        if not source_is_q4:
            raise InvalidArgumentError("--dtype int4 needs a Q4_0/Q4_1 GGUF; use auto, float32, bfloat16 or float16")
        return act, True
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"--dtype {dtype!r}: expected auto, int4, {', '.join(DTYPES)}")
    return DTYPES[dtype], False


def load_model(path_or_name: str | Path | None = None, device: str = "auto", dtype: str = "auto",
               adapter: str | Path | None = None) -> LoadedModel:
    """Load a Llama-family model from an HF folder, a GGUF file or a registry name (None = the default model).
    `adapter`: a PEFT LoRA folder merged into the weights, fp32 unless `dtype` names another float (LoRA needs the
    plain layers, not packed 4-bit ones). An adapter folder given as the model loads the base model its
    adapter_config.json names, with that adapter."""
    from corral.registry import resolve_model_path

    if adapter is None and path_or_name is not None and is_adapter(Path(path_or_name).expanduser()):
        adapter = Path(path_or_name).expanduser()
        path_or_name = adapter_base(adapter)
    if adapter is not None:
        if dtype == "int4":
            raise InvalidArgumentError("an adapter merges into unquantized weights; use --dtype auto, float32, "
                                       "bfloat16 or float16")
        dtype = "float32" if dtype == "auto" else dtype
    path = resolve_model_path(path_or_name)
    dev = resolve_device(device)
    lm = _load_hf(path, dev, dtype) if path.is_dir() else _load_gguf(path, dev, dtype)
    if adapter is not None:
        from corral.model.lora import load_adapter, merge_lora

        load_adapter(lm.model, adapter)
        lm.merged = merge_lora(lm.model)
    return lm


def is_adapter(p: Path) -> bool:
    """A PEFT adapter folder (adapter_config.json, no config.json of its own)."""
    return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model a PEFT adapter folder names (`base_model_name_or_path`)."""
    import json

    cfg = Path(folder) / "adapter_config.json"
    try:
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        base = None
    if not base:
        raise ModelFormatError(f"{cfg}: no base_model_name_or_path, so the base model is unknown; pass the base "
                               "model with --adapter, or merge it first with corral merge BASE --adapter ...")
    return str(base)


def _build(cfg: ModelConfig) -> LlamaForCausalLM:
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def _assign(model: LlamaForCausalLM, sd: dict[str, torch.Tensor], where: Path) -> None:
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    state = model.state_dict()
    # Keys still on the meta device are the ones the file must fill (swapped-in Int4Linear buffers are not).
    expected = {k for k, v in state.items() if v.is_meta}
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing:
        raise ModelFormatError(
            f"{where}: missing tensors {sorted(missing)[:5]}...; the checkpoint does not match its config")
    if unexpected:
        raise ModelFormatError(f"{where}: unexpected tensors {sorted(unexpected)[:5]}; is this a Llama checkpoint?")
    for k, t in sd.items():
        want = state[k].shape
        if t.shape != want:
            raise ModelFormatError(f"{where}: tensor {k} has shape {tuple(t.shape)}, the config implies {tuple(want)}")
    model.load_state_dict(sd, assign=True, strict=False)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


def _load_hf(folder: Path, dev: torch.device, dtype: str) -> LoadedModel:
    cfg = ModelConfig.from_hf_file(folder / "config.json")
    dt, _ = resolve_dtype(dtype, dev)
    sd = {k: v.to(dev, dt) for k, v in hf.load_state_dict(folder).items()}
    model = _build(cfg)
    _assign(model, sd, folder)
    model.reset_rope()
    return LoadedModel(model.eval(), cfg, folder, "hf", False)


def _packed_key(path: Path, dev: torch.device, dtype: str) -> str | None:
    """The packed cache's key for this load, or None where the packed form does not apply (not the 4-bit CPU path
    on corral's VNNI kernels)."""
    from corral.formats.packed import file_key

    if dev.type != "cpu" or dtype not in ("auto", "int4") or not kernels.vnni():
        return None
    return file_key(path, kernels.build_id())


def _load_gguf(path: Path, dev: torch.device, dtype: str) -> LoadedModel:
    from corral.formats.packed import load_packed

    key = _packed_key(path, dev, dtype)
    hit = load_packed(key) if key else None
    if hit is not None:
        return _from_packed(path, *hit)
    lm = _parse_gguf(path, dev, dtype)
    if key and lm.quantized:
        _save_packed(key, lm)
    return lm


def _save_packed(key: str, lm: LoadedModel) -> None:
    """Repack for corral's kernels now (what the engine would do) and cache the result for the next load."""
    from corral.formats.packed import save_packed
    from corral.model.quant import Int4Linear

    model = lm.model
    kernels.use_for(model)
    tensors: dict[str, torch.Tensor] = {}
    int4 = []
    for name, m in model.named_modules():
        if isinstance(m, Int4Linear):
            if m.packed is not None:  # a shape the kernel does not take: not cacheable
                return
            int4.append(name)
            tensors[f"{name}.vnni_packed"], tensors[f"{name}.vnni_scales"] = m.vnni_packed, m.vnni_scales
            if m.bias is not None:
                tensors[f"{name}.bias"] = m.bias.detach()
    for k, v in model.state_dict().items():
        if not (k == "lm_head.weight" and lm.config.tie_word_embeddings):
            tensors[k] = v.detach()
    tensors["inv_freq"] = model.inv_freq
    for i, t in enumerate(model.head_q8 or ()):
        tensors[f"head_q8.{i}"] = t
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_packed(key, tensors, {"config": lm.config.__dict__, "int4": int4})


def _from_packed(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> LoadedModel:
    from corral.model.quant import Int4Linear

    cfg = ModelConfig(**meta["config"])
    model = _build(cfg)
    for name in meta["int4"]:
        m = Int4Linear.from_vnni(tensors.pop(f"{name}.vnni_packed"), tensors.pop(f"{name}.vnni_scales"),
                                 tensors.pop(f"{name}.bias", None))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if child == "qkv_proj":
            parent.fuse_qkv(m)
        elif child == "gate_up_proj":
            parent.fuse_gate_up(m)
        else:
            setattr(parent, child, m)
    inv_freq = tensors.pop("inv_freq")
    head_q8 = tuple(tensors.pop(f"head_q8.{i}") for i in range(3) if f"head_q8.{i}" in tensors)
    _assign(model, tensors, path)
    model.compute_dtype = torch.float32
    model.reset_rope(inv_freq)
    model.head_q8 = head_q8 or None
    kernels.use_for(model)  # the decode plan over the cached weights
    return LoadedModel(model.eval(), cfg, path, "gguf", True)


def _parse_gguf(path: Path, dev: torch.device, dtype: str) -> LoadedModel:
    g = GGUFFile(path)
    names = g.tensor_names()
    tokens = g.array("tokenizer.ggml.tokens")
    vocab = int(g.metadata.get(f"{g.architecture}.vocab_size") or (len(tokens) if tokens else 0))
    cfg = ModelConfig.from_gguf_metadata(g.metadata, vocab, tied="output.weight" not in names, where=str(path))
    is_q4 = any(k in ("Q4_0", "Q4_1") for k in g.tensor_types())
    dt, keep_q4 = resolve_dtype(dtype, dev, is_q4)
    cfg.torch_dtype = str(dt).removeprefix("torch.")
    sd: dict[str, torch.Tensor] = {}
    q4: dict[str, Q4Tensor] = {}
    for name, arr in g.tensors(cfg.num_attention_heads, cfg.num_key_value_heads, keep_q4=keep_q4):
        if isinstance(arr, Q4Tensor):
            q4[name] = arr
        else:
            # Beside 4-bit layers the big embedding/head matrices stay fp16: the head's matvec is memory-bound
            # and fp16 ran faster than bf16 on the CPUs measured (1.25 vs 1.8 ms for 49152 x 576).
            big = keep_q4 and name in ("model.embed_tokens.weight", "lm_head.weight")
            if not arr.flags.writeable:  # F32/F16 tensors are views of the read-only file map
                arr = np.array(arr)
            sd[name] = torch.from_numpy(arr).to(dev, torch.float16 if big else dt)
    if "model.embed_tokens.weight" in sd and sd["model.embed_tokens.weight"].shape[0] != cfg.vocab_size:
        cfg.vocab_size = sd["model.embed_tokens.weight"].shape[0]
    model = _build(cfg)
    quantized = bool(q4)
    if q4:
        _swap_in_int4(model, q4, sd, dev)
    _assign(model, sd, path)
    if keep_q4 and dev.type == "cpu" and isinstance(model.lm_head, torch.nn.Linear):
        # A bf16 copy of the fp16 head for batched decoding (see LlamaForCausalLM.head): 16 rows take 2.7 ms in
        # bf16 here against 20 ms in fp16.
        model.batch_head = model.lm_head.weight.detach().to(torch.bfloat16)
    model.compute_dtype = dt
    factors = g.rope_freq_factors()
    model.reset_rope(None if factors is None else _inv_freq_with_factors(cfg, factors))
    kernels.release_freed_memory()  # the dequantizing and repacking above leave ~150 MB of freed heap behind
    return LoadedModel(model.eval(), cfg, path, "gguf", quantized)


def _swap_in_int4(model: LlamaForCausalLM, q4: dict[str, Q4Tensor], sd: dict[str, torch.Tensor],
                  dev: torch.device) -> None:
    """Replace the Linear of every Q4 weight by an Int4Linear; q/k/v and gate/up are fused into one matmul each
    where all parts are Q4 without bias (fewer, larger kernels: decode is dominated by per-op overhead)."""
    from corral.model.quant import Int4Linear

    def make(parts: list[str]) -> Int4Linear:
        ts = [q4.pop(p + ".weight") for p in parts]
        bias = sd.pop(parts[0] + ".bias", None) if len(parts) == 1 else None
        return Int4Linear(*(torch.from_numpy(np.concatenate([getattr(t, f) for t in ts])) for f in
                            ("codes", "scale", "offset")), bias, dev)

    def fusable(parts: list[str]) -> bool:
        return all(p + ".weight" in q4 and p + ".bias" not in sd for p in parts)

    for i, layer in enumerate(model.model.layers):
        pre = f"model.layers.{i}."
        qkv = [pre + f"self_attn.{n}_proj" for n in "qkv"]
        if fusable(qkv):
            layer.self_attn.fuse_qkv(make(qkv))
        gate_up = [pre + "mlp.gate_proj", pre + "mlp.up_proj"]
        if fusable(gate_up):
            layer.mlp.fuse_gate_up(make(gate_up))
    for name in [n.removesuffix(".weight") for n in list(q4)]:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, make([name]))


def _inv_freq_with_factors(cfg: ModelConfig, factors: np.ndarray) -> torch.Tensor:
    from corral.model.llama import rope_inv_freq

    plain = ModelConfig(**{**cfg.__dict__, "rope_scaling": None})
    return rope_inv_freq(plain) / torch.from_numpy(factors)
