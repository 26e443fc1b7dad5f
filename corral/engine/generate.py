"""The single-sequence, KV-cached generate loop behind `corral generate` and `corral chat`.

Token ids in, token ids out; text only through `Detokenizer` at the edge. The cache is allocated once per
`Generator` and reused across calls: a new prompt that starts with what the cache already holds (a chat's
history) only prefills its new tokens. The decode loop reads each sampled id on the host one step late, after the
next step is queued, so on CUDA the host never waits for the device between steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from corral.engine.sampling import SamplingParams, sample
from corral.errors import InvalidArgumentError
from corral.model import kernels
from corral.model.llama import KVCache, LlamaForCausalLM
from corral.tokenizer import Detokenizer, StopStrings, Tokenizer

if TYPE_CHECKING:
    from corral.engine.speculative import Drafter

PREFILL_CHUNK = 512
# On CUDA, attend over a multiple of this many cache entries: few shapes for compiled graphs, little waste.
# On CPU (eager) every extra key costs time, so attention spans exactly the filled entries.
KV_BUCKET = {"cuda": 256}


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (stop token or string) or "length"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused from the previous call
    prefill_s: float
    decode_s: float
    draft_proposed: int = 0  # speculative decoding: draft tokens the target checked
    draft_accepted: int = 0  # ... and kept

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def decode_tps(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 and self.completion_tokens > 1 else 0.0

    @property
    def prefill_tps(self) -> float:
        new = self.prompt_tokens - self.cached_tokens
        return new / self.prefill_s if self.prefill_s > 0 else 0.0


@dataclass
class Generator:
    """Owns a model, its tokenizer and one KV cache slot of `max_seq_len` entries."""

    model: LlamaForCausalLM
    tokenizer: Tokenizer
    max_seq_len: int = 0
    compile: bool = False  # torch.compile the one-token decode step (gpt-fast style); prefill stays eager
    draft: Drafter | None = None  # speculative decoding: a draft model proposes, this model verifies
    cache: KVCache | None = None
    cached_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        ctx = self.model.config.max_position_embeddings
        self.max_seq_len = min(self.max_seq_len or 4096, ctx)
        if self.draft is not None:
            self.max_seq_len = self.draft.bind(self.tokenizer, self.max_seq_len)
        kernels.use_for(self.model)
        self._step = self.model
        if self.compile:
            # CUDA: one static graph with CUDA graphs, attending over the whole buffer (masked), so nothing
            # recompiles as the sequence grows. CPU: the cache length stays symbolic, one compile for all lengths.
            cuda = self.model.device.type == "cuda"
            self._step = torch.compile(self.model, mode="reduce-overhead" if cuda else None, dynamic=not cuda)

    def _ensure_cache(self) -> KVCache:
        if self.cache is None:
            self.cache = KVCache.allocate(self.model.config, 1, self.max_seq_len, self.model.dtype, self.model.device)
        return self.cache

    def _forward(self, ids: list[int] | torch.Tensor, start: int, all_logits: bool = False) -> torch.Tensor:
        """Feed ids at positions start.. into the cache; return the last position's logits (1, V), or with
        `all_logits` every position's (n, V)."""
        dev = self.model.device
        t = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids, device=dev)
        n = t.numel()
        pos = torch.arange(start, start + n, device=dev).view(1, n)
        step = self._step if n == 1 else self.model
        if step is not self.model and dev.type == "cuda":
            kv_len = self.max_seq_len
        else:
            bucket = KV_BUCKET.get(dev.type, 1)
            kv_len = min(self.max_seq_len, -(-(start + n) // bucket) * bucket)
        out = step(t.view(1, n), pos, self._ensure_cache(), kv_len=kv_len, last_only=n == 1 or not all_logits)
        return out[0] if all_logits else out[:, -1]

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[str | GenerationResult]:
        """Yield text deltas as they become final, then one `GenerationResult`."""
        if not prompt_ids:
            raise InvalidArgumentError("the prompt is empty: give at least one token of text")
        if len(prompt_ids) >= self.max_seq_len:
            raise InvalidArgumentError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context here is {self.max_seq_len} "
                f"(raise --max-seq-len up to {self.model.config.max_position_embeddings}, or shorten the prompt)")
        max_new = min(params.max_tokens, self.max_seq_len - len(prompt_ids))
        dev = self.model.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % (2**31)))
        stop_ids = set() if params.ignore_eos else self.tokenizer.stop_ids
        with torch.inference_mode():
            t0 = time.perf_counter()
            # Reuse the cached prefix; always re-feed at least the last prompt token to get its logits.
            reuse = 0
            for a, b in zip(self.cached_ids, prompt_ids[:-1], strict=False):
                if a != b:
                    break
                reuse += 1
            self.cached_ids = self.cached_ids[:reuse]
            for s in range(reuse, len(prompt_ids), PREFILL_CHUNK):
                chunk = prompt_ids[s:s + PREFILL_CHUNK]
                logits = self._forward(chunk, s)
                self.cached_ids += chunk
            seen = None
            if params.repetition_penalty != 1.0:
                seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=dev)
                seen[0, torch.tensor(prompt_ids, device=dev)] = True
            nxt = sample(logits, params, gen, seen)
            if self.draft is not None:
                self.draft.prefill(prompt_ids)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            detok, stops = Detokenizer(self.tokenizer), StopStrings(params.stop)
            out_ids: list[int] = []
            finish = "length"
            steps = (self.draft.decode(self, nxt, max_new, params, gen, seen) if self.draft is not None
                     else self._decode(nxt, max_new, params, gen, seen))
            for tid in steps:
                if tid in stop_ids:
                    finish = "stop"
                    break
                out_ids.append(tid)
                delta = stops.feed(detok.add(tid))
                if delta:
                    yield delta
                if stops.hit:
                    finish = "stop"
                    break
            rest = stops.flush() if not stops.hit else ""
            if rest:
                yield rest
            t2 = time.perf_counter()
        drafted = (self.draft.proposed, self.draft.accepted) if self.draft is not None else (0, 0)
        yield GenerationResult(stops.text, out_ids, finish, len(prompt_ids), reuse, t1 - t0, t2 - t1, *drafted)

    def _decode(self, nxt: torch.Tensor, max_new: int, params: SamplingParams,
                gen: torch.Generator, seen: torch.Tensor | None) -> Iterator[int]:
        """Plain decoding: yield up to `max_new` ids, starting with `nxt` (sampled from the prompt, not yet fed).
        Each id is read on the host after the next step is queued; `cached_ids` lists the fed ids at every yield."""
        for i in range(max_new):
            pending = nxt
            pos = len(self.cached_ids)
            if i + 1 < max_new:  # max_new keeps pos < max_seq_len
                if seen is not None:
                    seen[0, pending] = True
                logits = self._forward(pending, pos)  # queued before we read `pending` on the host
                self.cached_ids.append(-1)  # its id is filled in below, once read
                nxt = sample(logits, params, gen, seen)
            tid = int(pending.item())
            if len(self.cached_ids) > pos:
                self.cached_ids[pos] = tid
            yield tid

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult:
        """Run to the end; return the result (no streaming)."""
        for ev in self.stream(prompt_ids, params):
            if isinstance(ev, GenerationResult):
                return ev
        raise AssertionError("stream ended without a result")
