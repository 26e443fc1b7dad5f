"""Hand-written CPU kernels, compiled on the machine that runs them (torch.utils.cpp_extension, cached per machine).

- `decode_attention` (csrc/decode_attention.cpp): the engine's batch-invariant decode attention, reading each
  sequence's own keys straight from the cache.
- `int4_linear` (csrc/int4_linear.cpp, CPUs with AVX-512 VNNI): 4-bit weights times int8-quantized activations.

They are built with the host's own instruction set (-march=native) the first time a model runs on CPU (~10-60 s
once; later loads take milliseconds). Where no C++ compiler is found or the build fails, corral says so once and
keeps PyTorch's kernels (the same results up to rounding, slower). `CORRAL_KERNELS=0` turns them off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_SOURCES = [Path(__file__).parent / "csrc" / name for name in ("decode_attention.cpp", "int4_linear.cpp",
                                                                  "decode_step.cpp")]
_HEADERS = [Path(__file__).parent / "csrc" / "corral_kernels.h"]
_lock = threading.Lock()
_state: dict[str, bool] = {}


def release_freed_memory() -> None:
    """Hand memory freed by large temporaries back to the OS (glibc keeps it in the process otherwise: the server
    held ~150 MB more than it used after loading). A no-op where the C library has no `malloc_trim`."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def vnni() -> bool:
    """True when the kernels are built and the CPU runs the int8 x int4 one (AVX-512 VNNI)."""
    return available() and torch.ops.corral.int4_linear_supported()


def build_id() -> str:
    """What identifies this build of the kernels (their sources and flags): part of the packed cache's key."""
    return _state.get("name", "")


def available() -> bool:
    """True when the CPU kernels are built and loaded (building them on the first call)."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _build()
        return _state["ok"]


_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]


def _build() -> bool:
    if os.environ.get("CORRAL_KERNELS", "1") == "0":
        return False
    from torch.utils.cpp_extension import _get_build_directory, load

    # The name carries a hash of the sources, flags and torch version: two corral versions on one machine (two
    # checkouts, an upgrade of either) share torch's build cache, and must never load each other's library.
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in _SOURCES + _HEADERS)
                          + f"{' '.join(_CFLAGS)} {torch.__version__}".encode())
    name = _state["name"] = f"corral_kernels_{digest.hexdigest()[:12]}"
    built = Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
    try:
        if built.is_file():  # built before: load it as it is (cpp_extension's checks cost ~0.1 s a start)
            torch.ops.load_library(str(built))
        elif shutil.which(os.environ.get("CXX", "c++")) is None:
            log.warning("no C++ compiler found: running on PyTorch's CPU kernels, slower under load "
                        "(install g++ for corral's own kernels)")
            return False
        else:
            load(name=name, sources=[str(p) for p in _SOURCES], is_python_module=False, extra_cflags=_CFLAGS,
                 extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # a broken toolchain must not stop inference: fall back, and say why once
        log.warning("building corral's CPU kernels failed (%s): running on PyTorch's CPU kernels, slower", e)
        return False

    @torch.library.register_fake("corral::decode_attention")
    def _(q, k_cache, v_cache, lengths, slots, scale):
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)

    @torch.library.register_fake("corral::int4_linear")
    def _(x, packed, scales):
        return x.new_empty(*x.shape[:-1], packed.shape[0] * 16)

    @torch.library.register_fake("corral::int8_linear")
    def _(x, packed, scales, wsum):
        return x.new_empty(*x.shape[:-1], packed.shape[0] * 16)

    return True


def use_for(model: torch.nn.Module) -> None:
    """Let a CPU `model` run on corral's kernels where they build: decode attention on its batch-invariant path,
    and 4-bit linear layers on the int8 x int4 kernel where the CPU has AVX-512 VNNI."""
    from corral.model.quant import Int4Linear

    cpu = next(model.parameters()).device.type == "cpu"
    fast = cpu and vnni()
    for m in model.modules():
        if isinstance(m, Int4Linear):
            if fast:
                m.use_vnni()
            m.q4_dm = None  # the fp16 scales kept for use_vnni (PyTorch's kernel has its own copy)
    if not cpu or not available():
        return
    model.cpu_kernels = True
    if fast:
        if getattr(model, "batch_head", None) is not None and model.config.hidden_size % 32 == 0 \
                and model.config.vocab_size % 16 == 0:
            from corral.model.quant import pack_q8

            model.head_q8 = pack_q8(model.lm_head.weight)
            model.batch_head = None
        if model.decode_plan is None:  # the loader may have made it already (a second call changes nothing)
            _make_decode_plan(model)


def _make_decode_plan(model: torch.nn.Module) -> None:
    """Give `model` a `DecodePlan` (csrc/decode_step.cpp) where every layer is 4-bit on the VNNI kernel with fused
    q/k/v and gate/up projections, no biases, fp32 activations: the decode step's layers then run as one call."""
    from corral.model.quant import Int4Linear

    cfg = model.config
    if model.dtype != torch.float32 or cfg.head_dim % 2 or cfg.head_dim > 512:
        return
    weights, modules = [], []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        parts = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if not all(isinstance(p, Int4Linear) and p.packed is None and p.bias is None for p in parts):
            return
        norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        if any(w.dtype != torch.float32 for w in norms):
            return
        weights += [norms[0].detach(), attn.qkv_proj.vnni_packed, attn.qkv_proj.vnni_scales, attn.o_proj.vnni_packed,
                    attn.o_proj.vnni_scales, norms[1].detach(), mlp.gate_up_proj.vnni_packed,
                    mlp.gate_up_proj.vnni_scales, mlp.down_proj.vnni_packed, mlp.down_proj.vnni_scales]
        modules += [layer.input_layernorm.weight, attn.qkv_proj, attn.o_proj, layer.post_attention_layernorm.weight,
                    mlp.gate_up_proj, mlp.down_proj]
    model.decode_plan = torch.classes.corral.DecodePlan(weights, cfg.num_attention_heads, cfg.num_key_value_heads,
                                                        cfg.head_dim, cfg.rms_norm_eps)
    model._plan_modules = tuple(modules)
    release_freed_memory()  # the repacking's temporaries
