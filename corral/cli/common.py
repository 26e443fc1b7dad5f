"""What several verbs do with their option groups: load the model (threads, adapter, tokenizer check), the draft,
the chat template; build the engine and `Service` behind serve, batch and redteam; load guards and shields."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from corral.errors import InvalidArgumentError, ModelFormatError
from corral.options import EngineOptions, ModelOptions, RunOptions, ShieldOptions, SpeedOptions


def load(cfg: ModelOptions, dtype: str | None = None) -> Any:
    """`load_model` for the config's model and adapter, after setting the CPU threads."""
    import torch

    from corral.model.loader import load_model

    cfg.check()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    return load_model(cfg.model, device=cfg.device, dtype=dtype or cfg.dtype, adapter=cfg.adapter)


def tokenizer_for(lm: Any) -> Any:
    """The model's tokenizer, checked against its embedding (a tokenizer from another model would index past it)."""
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(lm.path)
    if tok.vocab_size > lm.config.vocab_size:
        raise ModelFormatError(f"{lm.path}: the tokenizer has {tok.vocab_size} tokens but the model only "
                               f"{lm.config.vocab_size}; the tokenizer files belong to another model")
    return tok


def load_draft(cfg: Any, lm: Any, tok: Any) -> Any:
    """The `--draft-model` (None if not given), on the target's device, checked to share the target's tokenizer."""
    from corral.model.loader import load_model
    from corral.text import check_draft

    if not isinstance(cfg, SpeedOptions) or not cfg.draft_model:
        return None
    # --dtype int4 names a Q4 target's packed path; a draft takes auto (which packs a Q4 draft too).
    draft = load_model(cfg.draft_model, device=cfg.device, dtype="auto" if cfg.dtype == "int4" else cfg.dtype)
    check_draft(tok, tokenizer_for(draft), lm.path.name, cfg.draft_model)
    return draft.model


def template(cfg: RunOptions) -> str | None:
    """The text of `--chat-template` (None: the model's own)."""
    if not cfg.chat_template:
        return None
    p = Path(cfg.chat_template)
    if not p.is_file():
        raise InvalidArgumentError(f"--chat-template {p}: no such file")
    return p.read_text()


def kv_dtype(name: str, config: Any) -> Any:
    """The engine's KV cache dtype for `--kv-dtype` (None: auto; int8: q8_0 rows)."""
    import torch

    if name == "auto":
        return None
    if name == "q8_0":
        if config.head_dim % 32:
            raise InvalidArgumentError(f"--kv-dtype q8_0 needs a head dim that is a multiple of 32; this model's is "
                                       f"{config.head_dim}: pick --kv-dtype float16")
        return torch.int8
    return getattr(torch, name)


def build_service(cfg: Any, hooks: Any = None) -> tuple[Any, Any, Any]:
    """The model, its (not yet started) engine and the `Service` over them, from a config with model, engine (and
    optionally speed and shield) options. `hooks(engine, model_id)` makes the service's metrics hooks."""

    from corral.engine.engine import Engine
    from corral.serve.service import Service

    assert isinstance(cfg, ModelOptions) and isinstance(cfg, EngineOptions)
    cfg.check()
    chat_template = template(cfg)
    lm = load(cfg)
    tok = tokenizer_for(lm)
    seq = min(cfg.max_seq_len, lm.config.max_position_embeddings)
    batch = cfg.max_batch
    if cfg.kv_cache_tokens is not None:
        batch = cfg.kv_cache_tokens // seq
        if batch < 1:
            raise InvalidArgumentError(f"--kv-cache-tokens {cfg.kv_cache_tokens} is less than one sequence of "
                                       f"--max-seq-len {seq}")
    speed = cfg if isinstance(cfg, SpeedOptions) else SpeedOptions()
    engine = Engine(lm.model, stop_ids=tok.stop_ids, max_batch=batch, max_seq_len=seq, prefill_chunk=cfg.prefill_chunk,
                    max_queue=cfg.max_queue, compile=speed.compile, draft=load_draft(cfg, lm, tok),
                    draft_tokens=speed.draft_tokens,
                    kv_dtype=kv_dtype(cfg.kv_dtype, lm.config))
    if speed.compile:
        print("compiling the decode step (a few minutes the first time)...", file=sys.stderr, flush=True)
        engine.warm_up()
    model_id = getattr(cfg, "served_model_name", None) or lm.path.name.removesuffix(".gguf")
    aliases = tuple(a for a in (cfg.model, lm.path.name, "default" if cfg.model in (None, "default") else None) if a)
    shields, guard_id = build_shields(cfg, engine) if isinstance(cfg, ShieldOptions) else (None, None)
    service = Service(engine, tok, model_id, aliases, hooks=hooks(engine, model_id) if hooks else None,
                      chat_template=chat_template, shields=shields, guard_id=guard_id)
    return lm, engine, service


def load_guard(model: str, adapter: str | None, policy: str | None, mode: str, threshold: float,
               like: RunOptions) -> tuple[Any, str]:
    """A `Guard` (on the device of `like`, the served model's options) and its id, for --guard and --judge."""
    from corral.guard import Guard, load_taxonomy
    from corral.model.loader import load_model

    taxonomy = load_taxonomy(policy)  # a bad policy file fails before the model loads
    glm = load_model(model, device=like.device, dtype="auto" if like.dtype == "int4" else like.dtype, adapter=adapter)
    guard = Guard(glm.model, tokenizer_for(glm), taxonomy, mode=mode, threshold=threshold)
    return guard, glm.path.name.removesuffix(".gguf")


def build_shields(cfg: Any, engine: Any) -> tuple[Any, str | None]:
    """The server's `Shields` (the guard runs on the engine's thread: `engine.call`), or (None, None)."""
    if cfg.guard is None and not cfg.injection_shield:
        return None, None
    from corral.guard.shields import Shields

    inp, out = cfg.shields()
    guard, guard_id = None, None
    if cfg.guard is not None:
        guard, guard_id = load_guard(cfg.guard, cfg.guard_adapter, cfg.guard_policy, cfg.guard_mode,
                                     cfg.guard_threshold, cfg)
    injection = None
    if cfg.injection_shield:
        from corral.guard.injection import InjectionDetector

        injection = InjectionDetector.load()
    shields = Shields(guard, input=inp and guard is not None, output=out and guard is not None, injection=injection,
                      action=cfg.shield_action, stream_tokens=cfg.shield_stream_tokens, run=engine.call,
                      name=guard_id or "guard")
    return shields, guard_id


def describe_shields(service: Any) -> dict[str, Any]:
    """Which shields a service runs, for banners and reports ({} without any)."""
    sh = service.shields
    if sh is None:
        return {}
    which = [n for n, on in (("input", sh.input), ("output", sh.output), ("injection", sh.injection)) if on]
    return {"shields": ",".join(which), "guard": service.guard_id, "shield_action": sh.action,
            "guard_mode": sh.guard.mode if sh.guard else None}
