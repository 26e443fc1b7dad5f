"""The continuous-batching engine: token ids in, token ids out; knows nothing of HTTP.

KV memory: slots that grow with use. Each running sequence owns one slot of the cache, (slots, kv heads, positions,
head dim) per layer; the buffers start at one slot of 256 positions and double in slots and length as requests
need them (`kv_cache.resized`), up to `max_batch` slots x `max_seq_len` tokens (`--kv-cache-tokens` sets the budget,
`max_batch = budget // max_seq_len`); after a second with nothing to do the engine shrinks back to the one slot it
keeps for prefix reuse. Slots rather than paged blocks because the model's attention then reads a plain view of the
cache (`cache[:n]`, no gather, no block tables), which is what makes batched decode cheap on CPU; the price is a
copy when the buffers grow, and a slot as long as the longest running sequence. On CPU the cache is fp16 by default
(`kv_dtype`), read by corral's attention kernel; `kv_dtype=torch.int8` keeps q8_0 rows (`llama.kv_pack`).

Running sequences always occupy slots 0..n-1: when one finishes, the last one's KV is moved into its slot (only
the used prefix is copied). Finished slots keep their tokens, so a new request that shares a prefix with one of
them (a system prompt) is placed there and skips that part of its prefill (see `_admit`); a request whose prefix
another slot holds, a running one included, copies those keys and values before it prefills (`_copy_prefix`).

One `step()`: admit waiting requests into free slots, run prefill chunks (up to `prefill_chunk` tokens in all, so a
long prompt cannot stall the others), then one decode forward for every sequence that has a token to feed.
Sampled ids are read on the host once per step (stop ids and the callers' events need them).

Text is the caller's: a request's events are `Tokens` (its new ids, with logprobs if asked) and one `Finished`;
`corral.text.text_events` turns them into text and applies stop strings (a hit cancels the request here).

Speculative decoding (`draft=`, `corral serve --draft-model`): the decode forward becomes a round of k draft
forwards for every decoding row (one draft KV slot beside each slot, `BatchDrafter`) and one target forward of
k + 1 tokens per row; each row keeps its accepted drafts plus one token (`_decode_speculative`). Trade-offs: every
row of the batch drafts and verifies k tokens (one shape for all, so the forwards stay batch-invariant: a row's
tokens are the same alone or in a batch), so a batch pays for the drafts of rows whose drafts are rejected; rows
that need per-token logits work (structured output, logprobs) ride along with their drafts ignored and take one
token per step from the first verified position; on CPU k is at most 7 (the batch-invariant attention takes at
most 8 new tokens per row).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from corral.engine.kv_cache import GROW_FROM, blocks, grown_size, resized, swap_slots
from corral.engine.sampling import SamplingParams, sample
from corral.errors import CorralError, InvalidArgumentError
from corral.model import kernels
from corral.model.llama import KV_BLOCK, SMALL_T, KVCache, LlamaForCausalLM


class QueueFullError(CorralError):
    """The waiting queue is at its limit; retry later (HTTP 503 with Retry-After)."""


class ContextLengthError(InvalidArgumentError):
    """The prompt does not fit the context (HTTP 400 context_length_exceeded)."""


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (id, logprob) of the most likely alternatives


@dataclass
class Tokens:
    """A request's new token ids (one per step, more after a speculative round), with their logprobs if asked."""

    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Finished:
    finish_reason: str  # stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    error: str | None = None


Event = Tokens | Finished


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]  # called from the engine thread
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's only
    id: str = ""
    constraint: Any = None  # corral.grammar.Constraint | None: structured output (JSON schema)
    # engine state
    slot: int = -1
    fed: int = 0  # tokens of prompt + output whose KV is in the slot
    cached: int = 0
    pending: int | None = None  # sampled, not yet fed
    out_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generator: torch.Generator | None = None


class Engine:
    """Owns the model, the cache and the scheduler; `start()` runs `step()` in a background thread."""

    def __init__(self, model: LlamaForCausalLM, *, stop_ids: Iterable[int] = (), max_batch: int = 16,
                 max_seq_len: int = 2048, prefill_chunk: int = 128, max_queue: int = 256, compile: bool = False,
                 draft: LlamaForCausalLM | None = None, draft_tokens: int = 4, kv_dtype: torch.dtype | None = None,
                 batch_invariant: bool = True):
        ctx = model.config.max_position_embeddings
        self.model, self.stop_ids = model, frozenset(stop_ids)  # a sampled stop id ends a request (not ignore_eos)
        kernels.use_for(model)
        # `batch_invariant` (the server): a request's tokens do not depend on its neighbours or on what was cached,
        # so prefixes are reused in whole prefill chunks (any length on the CPU decode plan). Off (one stream,
        # `corral.text.Session`): any cached prefix is reused and single-row forwards take the fastest kernels.
        self.batch_invariant = batch_invariant
        # `compile`: the decode forward through torch.compile with symbolic batch size and cache length (one
        # graph for 1 sequence, one for 2..max_batch; ~1 min each on first use), prefill stays eager. On CUDA with
        # one slot: one static graph replayed with CUDA graphs, attending over the whole (masked) cache.
        # With the CPU decode plan (4-bit models on VNNI CPUs) the layers are one C++ call already: nothing for
        # torch.compile to fuse, so `compile` is ignored there.
        compile = compile and model.decode_plan is None
        self._static_kv = compile and model.device.type == "cuda" and max_batch == 1
        self._decode_model = (torch.compile(model, mode="reduce-overhead", dynamic=False) if self._static_kv
                              else torch.compile(model, dynamic=True) if compile else model)
        self.max_batch, self.max_seq_len = max_batch, min(max_seq_len, ctx)
        self.prefill_chunk, self.max_queue = prefill_chunk, max_queue
        self.drafter = None
        extra = 0  # a verify round writes up to k positions past the last one a sequence may feed
        if draft is not None:
            from corral.engine.speculative import BatchDrafter

            if not 1 <= draft_tokens < SMALL_T:
                raise InvalidArgumentError(f"--draft-tokens {draft_tokens}: give 1 to {SMALL_T - 1} draft tokens "
                                           "per round")
            self.max_seq_len = min(self.max_seq_len, draft.config.max_position_embeddings)
            extra = draft_tokens
            self.drafter = BatchDrafter(draft, draft_tokens, max_batch, self.max_seq_len + extra, compile,
                                        batch_invariant)
        # `kv_dtype`: fp16 halves the cache's memory and the bytes decode attention reads per step (llama.cpp's
        # default cache type); keys and values are rounded once, when written. Default: fp16 for a 4-bit model on
        # corral's CPU decode path (its attention kernel widens fp16 as it reads; quality: tests/model/
        # test_decode_plan.py), else the model's activation dtype (a model asked for in fp32 keeps an fp32 cache).
        if kv_dtype is None:
            kv_dtype = torch.float16 if model.decode_plan is not None else model.dtype
        # The buffers grow with use, except under a CUDA graph, which replays one static cache.
        self.cache_len = self.max_seq_len + extra
        self.grows = not self._static_kv
        self.idle_shrink_s = 1.0  # idle this long, the cache shrinks to one slot
        self.cache = KVCache.allocate(model.config, 1 if self.grows else max_batch,
                                      min(GROW_FROM, self.cache_len) if self.grows else self.cache_len, kv_dtype,
                                      model.device)
        if model.device.type == "cuda":
            # Measured on an H200 (bench/gpu_check.py, profiled): SDPA's cuDNN backend spends ~1.9 ms of host
            # time per call on a masked one-token decode, 30 calls a step: 13 tok/s for one stream. Without it
            # SDPA dispatches to the memory-efficient or math kernels, which take any mask. Not yet re-measured.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.slot_ids: list[list[int]] = [[] for _ in range(max_batch)]  # tokens whose KV each slot holds
        self.running: list[Request] = []  # index == slot
        self.waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0
        self.on_step: Callable[[Engine], None] | None = None  # metrics hook
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()

    # --- called from other threads -------------------------------------------------------------------------

    def submit(self, req: Request) -> Request:
        """Queue a request; raises `ContextLengthError` or `QueueFullError` at once instead of queueing it."""
        n = len(req.prompt_ids)
        if n == 0:
            raise InvalidArgumentError("the prompt is empty")
        if n >= self.max_seq_len:
            raise ContextLengthError(
                f"the prompt has {n} tokens; this server's context is {self.max_seq_len} tokens")
        with self._cv:
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are waiting; retry shortly")
            req.id = req.id or f"req-{next(self._ids)}"
            self.waiting.append(req)
            self._cv.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Stop a request at the next step and free its slot (a client went away)."""
        req.cancelled = True
        with self._cv:
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the engine thread between steps (model work outside generation, e.g. embeddings)."""
        fut: Future = Future()
        with self._cv:
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut

    def start(self) -> Engine:
        """Run the engine in a background thread (tests, embedding in other programs)."""
        self._thread = threading.Thread(target=self._loop, name="corral-engine", daemon=True)
        self._thread.start()
        return self

    def run_beside(self, companion: Callable[[], Any], stop: Callable[[], None] | None = None) -> None:
        """Run the engine in this thread and `companion` (an HTTP server, a batch driver) in a new one, until the
        companion returns. On Ctrl-C, `stop` (which must make the companion return) is called and the engine
        keeps stepping until the companion has returned; without `stop` the KeyboardInterrupt propagates at once.

        Why not `start()`: on CPU the engine should own the main thread's OpenMP team. A second thread doing
        the model's work gets its own team, and with more OpenMP threads than cores libgomp stops spinning
        between parallel regions: each of the decode step's ~400 small kernels then waits on a wake-up, which
        measured 2x slower per step here (10 vs 20 ms for the default model, 2 threads).
        """
        errors: list[BaseException] = []

        def side() -> None:
            try:
                companion()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
            finally:
                self.shutdown(join=False)

        t = threading.Thread(target=side, name="corral-companion", daemon=True)
        t.start()
        try:
            self._loop()
        except KeyboardInterrupt:
            if stop is not None:
                stop()
                self._stop = False
                self._drain(t)
            raise
        t.join()
        if errors:
            raise errors[0]

    def _drain(self, t: threading.Thread) -> None:
        """Keep stepping (cancelled requests finish) until the companion has returned."""
        while t.is_alive():
            try:
                with self._cv:
                    self._cv.wait(0.05)
                if self.running or self.waiting:
                    self.step()
            except KeyboardInterrupt:  # a second Ctrl-C: give up at once
                return

    def shutdown(self, join: bool = True) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread and join and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def warm_up(self) -> None:
        """Run decodes of 1 and of 2 sequences over one and over two KV blocks on free slots, so a compiled step
        makes its graphs now (sizes 1 are specialised: four graphs), not on the first requests. The scratch KV
        they write is never read: the slots hold no tokens."""
        if self.running or self.waiting:
            raise RuntimeError("warm_up() runs before the engine takes requests")
        dev = self.model.device
        self._reserve(min(2, self.max_batch), min(KV_BLOCK, self.max_seq_len - 1) + 1 + (
            self.drafter.k if self.drafter is not None else 0))
        with torch.inference_mode():
            for b in (1, min(2, self.max_batch)):
                for pos in (0, min(KV_BLOCK, self.max_seq_len - 1)):
                    self._forward(torch.zeros(b, 1, dtype=torch.long, device=dev),
                                  torch.full((b, 1), pos, dtype=torch.long, device=dev), pos + 1, None)
                    if self.drafter is not None:  # a speculative round's shapes: draft 2 and 1 tokens, verify k+1
                        sp, fed = self.drafter, torch.full((b,), max(pos, 1), device=dev)
                        zeros = torch.zeros(b, dtype=torch.long, device=dev)
                        plain = [SamplingParams()] * b
                        drafts, _ = sp.draft(zeros, zeros, fed, self.model.config.vocab_size, plain, [None] * b,
                                             [None] * b)
                        self._verify_forward(torch.cat([zeros[:, None], drafts], 1), fed)

    def forget(self) -> None:
        """Drop the tokens every free slot keeps for prefix reuse (the next prompt is prefilled in full)."""
        for s in range(len(self.running), self.max_batch):
            self.slot_ids[s] = []
            if self.drafter is not None:
                self.drafter.slot_ids[s] = []

    @property
    def kv_tokens_used(self) -> int:
        return sum(r.fed for r in self.running)

    @property
    def kv_tokens_total(self) -> int:
        """The cache's budget in tokens (what it may grow to)."""
        return self.max_batch * self.max_seq_len

    @property
    def kv_blocks(self) -> int:
        """KV blocks (64 positions of one slot, all layers) allocated now."""
        return blocks(self.cache)

    @property
    def kv_bytes(self) -> int:
        return self.cache.nbytes()

    def _reserve(self, slots: int, length: int) -> None:
        """Grow the cache (if it may) to at least `slots` slots of `length` positions."""
        c = self.cache
        have_s, have_l = c.k[0].shape[0], c.max_len
        if slots <= have_s and length <= have_l:
            return
        if not self.grows:
            raise RuntimeError(f"the KV cache holds {have_s} x {have_l} positions, {slots} x {length} asked")
        self._resize(grown_size(have_s, slots, self.max_batch), grown_size(have_l, length, self.cache_len, GROW_FROM))

    def _resize(self, slots: int, length: int) -> None:
        self.model.release_cache()  # the decode plan lets go of the old buffers
        self.cache = resized(self.cache, slots, length)
        n = self.cache.max_len
        for s in range(self.max_batch):  # what no longer fits is no longer cached
            self.slot_ids[s] = self.slot_ids[s][:n] if s < slots else []

    def shrink(self) -> None:
        """Give back the memory of idle slots: keep slot 0 (the last request to finish, for prefix reuse)."""
        if self.grows and not self.running and not self.waiting:
            keep = grown_size(1, len(self.slot_ids[0]), self.cache_len, GROW_FROM)
            if self.cache.k[0].shape[0] > 1 or self.cache.max_len > -(-keep // KV_BLOCK) * KV_BLOCK:
                self._resize(1, keep)
                kernels.release_freed_memory()

    # --- the engine thread ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                idle = time.monotonic()
                while not self._stop and not self.waiting and not self.running and not self._calls:
                    self._cv.wait(0.5)  # with a timeout, so Ctrl-C reaches a main thread that waits here
                    if time.monotonic() - idle >= self.idle_shrink_s:
                        self.shrink()
                if self._stop:
                    return
                calls, self._calls = list(self._calls), deque()
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        with torch.inference_mode():
                            fut.set_result(fn())
                    except Exception as e:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(e)
            if not self.waiting and not self.running:
                continue
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a failed step must fail its requests, not kill the server
                for r in list(self.running):
                    self._finish(r, "error", error=f"{type(e).__name__}: {e}")
            if self.on_step:
                self.on_step(self)

    def run_until_idle(self) -> None:
        """Step on the calling thread until every submitted request has finished: offline use (scripts,
        benchmarks) of an engine that is not running its own thread."""
        while self.running or self.waiting:
            self.step()

    @torch.inference_mode()
    def step(self) -> None:
        """One scheduling round: cancellations, admissions, one prefill chunk, one batched decode."""
        self.steps += 1
        for r in [r for r in self.running if r.cancelled]:
            self._finish(r, "cancelled")
        with self._cv:
            if self.waiting and len(self.running) < self.max_batch:  # grow once for all admissions of this step
                batch = list(itertools.islice(self.waiting, self.max_batch - len(self.running)))
                self._reserve(len(self.running) + len(batch), max(len(r.prompt_ids) for r in batch))
            while self.waiting and len(self.running) < self.max_batch:
                r = self.waiting.popleft()
                if r.cancelled:
                    r.emit(Finished("cancelled", len(r.prompt_ids), 0, 0))
                    continue
                try:
                    self._admit(r)
                except Exception as e:  # noqa: BLE001 - fail this request alone, not the batch
                    if r in self.running:
                        self._finish(r, "error", error=f"{type(e).__name__}: {e}")
                    else:
                        r.emit(Finished("error", len(r.prompt_ids), 0, 0, f"{type(e).__name__}: {e}"))
        # Prefill: chunks of waiting prompts, in slot order, up to `prefill_chunk` tokens a step (the first chunk
        # always), so a step's latency stays bounded and many short remainders (prompts whose prefix was copied
        # from another slot) go in one step.
        budget, prefilled = self.prefill_chunk, set()
        for r in [r for r in self.running if r.fed < len(r.prompt_ids)]:
            self._copy_prefix(r)  # once: after it, no slot holds more of this prompt than the prompt's own chunks
            while r.fed < len(r.prompt_ids) and r.slot >= 0:
                size = self._chunk_size(r)
                if prefilled and size > budget:
                    break
                self._prefill_chunk(r, size)
                budget -= size
                prefilled.add(id(r))
            if budget <= 0:
                break
        decoding = [r for r in self.running if r.pending is not None and id(r) not in prefilled]
        if decoding:
            self._decode(decoding)

    def _admit(self, r: Request) -> None:
        n = len(self.running)  # `step` grew the cache for this slot
        # Prefer the free slot whose leftover tokens share the longest prefix with this prompt.
        best, best_len = n, -1
        for s in range(n, self.max_batch):
            common = _common_prefix(self.slot_ids[s], r.prompt_ids[:-1])
            if common > best_len:
                best, best_len = s, common
        if best != n:
            self._swap_slots(best, n, max(len(self.slot_ids[best]), len(self.slot_ids[n])))
        unit = self._reuse_unit()
        reuse = max(best_len, 0) // unit * unit
        if self.drafter is not None:  # the draft slot must hold the reused prefix too
            reuse = min(reuse, _common_prefix(self.drafter.slot_ids[n], r.prompt_ids[:reuse]))
            reuse = reuse // unit * unit
            self.drafter.slot_ids[n] = list(r.prompt_ids[:reuse])
        r.slot, r.fed = n, reuse
        r.cached = r.fed
        if r.params.temperature > 0:
            r.generator = torch.Generator(device=self.model.device)
            # any integer is a valid seed: fold it into the generator's 64-bit range
            r.generator.manual_seed(r.params.seed % 2**63 if r.params.seed is not None else time.time_ns() % 2**31)
        self.slot_ids[n] = list(r.prompt_ids[: r.fed])
        self.running.append(r)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int, slots: torch.Tensor | None,
                 prefill: bool = False):
        model = self.model if prefill else self._decode_model  # a prefill chunk vs decode (packed rows)
        if not prefill and self._static_kv:
            kv_len = self.cache.max_len  # one shape for the CUDA graph
        return model(ids, positions, self.cache, kv_len=kv_len, slots=slots, last_only=True,
                     batch_invariant=self.batch_invariant)[:, -1]

    def _reuse_unit(self) -> int:
        """Cached prefixes are reused in multiples of this many tokens. Under batch invariance, whole prefill chunks
        (chunks then always start at multiples of `prefill_chunk`, so a prompt computes bit-identical KV and logits
        whether or not part of it was cached), unless the model's bits do not depend on chunking at all (the CPU
        decode plan): then any length."""
        models = [self.model] + ([self.drafter.model] if self.drafter is not None else [])
        return 1 if not self.batch_invariant or all(m.chunking_free for m in models) else self.prefill_chunk

    def _copy_prefix(self, r: Request) -> None:
        """Before prefilling, take what another slot (running or free) already holds of this prompt: its keys and
        values are copied (in `_reuse_unit`s: they are then the bits this prompt's own prefill would make).
        Sixteen requests behind one long system prompt prefill it once, not sixteen times.
        Copied, not shared: each slot still holds its own copy (paged, shared blocks are not built yet)."""
        if self.drafter is not None:  # the draft's slots would need the same copy
            return
        want = r.prompt_ids[:-1]  # the last token is always computed: its logits start the answer
        src, best = -1, r.fed
        for s, ids in enumerate(self.slot_ids):
            if s == r.slot or best >= min(len(ids), len(want)) or ids[best] != want[best]:
                continue
            common = _common_prefix(ids, want)
            if common > best:
                src, best = s, common
        unit = self._reuse_unit()
        reuse = best // unit * unit
        if src < 0 or reuse <= r.fed:
            return
        self._reserve(r.slot + 1, reuse)
        for buf in self.cache.k + self.cache.v:
            buf[r.slot, :, r.fed:reuse] = buf[src, :, r.fed:reuse]
        self.slot_ids[r.slot] = list(r.prompt_ids[:reuse])
        r.fed = r.cached = reuse

    def _chunk_size(self, r: Request) -> int:
        """The next prefill chunk of `r`: up to the next multiple of `prefill_chunk` (the grid every prompt is cut
        on, so cached and fresh prefixes hold the same bits) or the prompt's end."""
        end = (r.fed // self.prefill_chunk + 1) * self.prefill_chunk
        return min(end, len(r.prompt_ids)) - r.fed

    def _prefill_chunk(self, r: Request, size: int) -> None:
        dev = self.model.device
        chunk = r.prompt_ids[r.fed: r.fed + size]
        self._reserve(r.slot + 1, r.fed + len(chunk))
        pos = torch.arange(r.fed, r.fed + len(chunk), device=dev).view(1, -1)
        ids, slot = torch.tensor([chunk], device=dev), torch.tensor([r.slot], device=dev)
        # Slot 0 needs no gather; batch invariance keeps the gather (a view and a copy may round differently).
        logits = self._forward(ids, pos, r.fed + len(chunk), slot if self.batch_invariant or r.slot else None,
                               prefill=True)
        if self.drafter is not None:
            self.drafter.prefill(ids, pos, r.fed + len(chunk), slot)
            self.drafter.slot_ids[r.slot] += chunk
        r.fed += len(chunk)
        self.slot_ids[r.slot] += chunk
        if r.fed == len(r.prompt_ids):
            self._sample_and_emit([r], logits)

    def _decode(self, rows: list[Request]) -> None:
        if self.drafter is not None:
            self._decode_speculative(rows)
            return
        dev = self.model.device
        rows = self._pack(rows)
        ids = torch.tensor([[r.pending] for r in rows], device=dev)
        pos = torch.tensor([[r.fed] for r in rows], device=dev)
        kv_len = max(r.fed for r in rows) + 1
        self._reserve(len(rows), kv_len)
        logits = self._forward(ids, pos, kv_len, None)  # rows are slots 0..n-1: attention reads cache views
        for r in rows:
            self.slot_ids[r.slot].append(r.pending)
            r.fed += 1
            r.pending = None
        self._sample_and_emit(rows, logits)

    def _verify_forward(self, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """The target's forward of (B, k+1) tokens at positions fed.. in slots 0..B-1 → (B, k+1, V) logits."""
        pos = fed[:, None] + torch.arange(ids.shape[1], device=fed.device)
        model = self.model if self._static_kv else self._decode_model  # the static graph takes one token
        return model(ids, pos, self.cache, kv_len=int(fed.max()) + ids.shape[1], last_only=False,
                     batch_invariant=self.batch_invariant)

    def _decode_speculative(self, rows: list[Request]) -> None:
        """One speculative round for every decoding row: draft k tokens, verify them in one target forward,
        keep each row's accepted drafts plus one token. Two host syncs: the drafts' acceptance, and (only if some
        row needs per-token work) `_sample_and_emit`'s for those rows."""
        from corral.engine.speculative import verify_rows

        sp, dev, k = self.drafter, self.model.device, self.drafter.k
        rows = self._pack(rows)
        self._reserve(len(rows), max(r.fed for r in rows) + k + 1)
        vocab = self.model.config.vocab_size
        fed = torch.tensor([r.fed for r in rows], device=dev)
        pending = torch.tensor([r.pending for r in rows], device=dev)
        prev = torch.tensor([self.slot_ids[r.slot][-1] for r in rows], device=dev)
        params, gens = [r.params for r in rows], [r.generator for r in rows]
        seens = [_seen(r, vocab, dev) for r in rows]  # prompt + output, the pending token included
        drafts, qs = sp.draft(prev, pending, fed, vocab, params, gens, seens)
        logits = self._verify_forward(torch.cat([pending[:, None], drafts], 1), fed)  # (B, k+1, V)
        spec = [i for i, r in enumerate(rows) if r.constraint is None and r.top_logprobs is None]
        got = verify_rows(logits[spec], [qs[i] for i in spec], drafts[spec], [params[i] for i in spec],
                          [gens[i] for i in spec], [seens[i] for i in spec]).tolist() if spec else []
        new: dict[int, list[int]] = {}  # row → accepted drafts + the round's own token
        for i, g in zip(spec, got, strict=True):
            new[i] = g[1:g[0] + 2]
            sp.proposed += k
            sp.accepted += g[0]
        # Every row's KV bookkeeping first: finishing a request below moves other rows' slots by their `fed`.
        base = [r.fed for r in rows]
        for i, r in enumerate(rows):
            m = len(new[i]) - 1 if i in new else 0
            self.slot_ids[r.slot] += [r.pending, *new.get(i, [])[:m]]
            r.fed += 1 + m
            sp.slot_ids[r.slot] = self.slot_ids[r.slot][:base[i] + 1 + min(m, k - 1)]
            r.pending = None
        others = [i for i in range(len(rows)) if i not in new]
        if others:
            self._sample_and_emit([rows[i] for i in others], logits[others, 0])
        for i, toks in new.items():
            r = rows[i]
            for j, tid in enumerate(toks):
                r.fed = base[i] + 1 + j  # what `_accept`'s room check expects: the tokens fed before `tid`
                r.pending = None
                self._accept(r, tid, None)
                if r.pending is None:  # finished: the rest of its tokens are dropped
                    break
            else:
                r.fed = base[i] + len(toks)

    def _pack(self, rows: list[Request]) -> list[Request]:
        """Move the decoding rows to slots 0..n-1 (a request still prefilling can sit among them after a swap in
        `_finish`), so decode attention reads plain views of the cache, never a gathered copy, and a compiled
        step sees one kind of call. Returns the rows in slot order."""
        n, decoding = len(rows), set(map(id, rows))
        holes = [r for r in self.running[:n] if id(r) not in decoding]
        movers = [r for r in self.running[n:] if id(r) in decoding]
        for a, b in zip(holes, movers, strict=True):
            sa, sb = a.slot, b.slot
            self._swap_slots(sa, sb, max(len(self.slot_ids[sa]), len(self.slot_ids[sb])))
            a.slot, b.slot = sb, sa
            self.running[sa], self.running[sb] = b, a
        return sorted(rows, key=lambda r: r.slot)

    def _sample_and_emit(self, rows: list[Request], logits: torch.Tensor) -> None:
        """Sample one token per row (B, V) and hand each request its new text."""
        for i, r in enumerate(rows):
            if r.constraint is not None:  # in place, before greedy and sampling; other rows are left untouched
                r.constraint.mask(logits[i])
        greedy = [i for i, r in enumerate(rows)
                  if r.params.temperature == 0 and r.params.repetition_penalty == 1.0 and not r.params.logit_bias]
        if len(greedy) == len(rows):
            chosen = logits.argmax(-1)
        else:
            chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
            if greedy:
                idx = torch.tensor(greedy, device=logits.device)
                chosen[idx] = logits[idx].argmax(-1)
            for i, r in enumerate(rows):
                if i not in greedy:
                    chosen[i] = sample(logits[i:i + 1], r.params, r.generator,
                                       _seen(r, logits.shape[-1], logits.device))[0]
        want_lp = [i for i, r in enumerate(rows) if r.top_logprobs is not None]
        lps: dict[int, TokenLogprob] = {}
        if want_lp:
            lp = torch.log_softmax(logits[want_lp].float(), -1)
            k = max(rows[i].top_logprobs for i in want_lp) or 1
            top_v, top_i = lp.topk(k, dim=-1)
            chosen_lp = lp.gather(1, chosen[want_lp].view(-1, 1))[:, 0]
            for j, i in enumerate(want_lp):
                n = rows[i].top_logprobs
                lps[i] = TokenLogprob(0, float(chosen_lp[j]),
                                      list(zip(top_i[j, :n].tolist(), top_v[j, :n].tolist(), strict=True)))
        ids = chosen.tolist()  # the one host sync of the step
        now = time.perf_counter()
        for i, (r, tid) in enumerate(zip(rows, ids, strict=True)):
            if r.first_token_at is None:
                r.first_token_at = now
            self._accept(r, tid, lps.get(i))

    def _accept(self, r: Request, tid: int, lp: TokenLogprob | None) -> None:
        p, c = r.params, r.constraint
        if c is not None and c.error:  # the mask could not be computed
            self._finish(r, "error", error=f"structured output: {c.error}")
            return
        if not p.ignore_eos and tid in self.stop_ids:
            self._finish(r, "stop")
            return
        r.out_ids.append(tid)
        if c is not None:
            c.accept(tid)
        if lp is not None:
            lp.token_id = tid
        r.emit(Tokens([tid], [lp] if lp is not None else None))
        if c is not None and c.error:
            self._finish(r, "error", error=f"structured output: {c.error}")
        elif c is not None and c.done:  # the JSON is complete; only EOS could follow
            self._finish(r, "stop")
        elif len(r.out_ids) >= p.max_tokens or r.fed >= self.max_seq_len:  # no room to feed `tid`
            self._finish(r, "length")
        else:
            r.pending = tid

    def _finish(self, r: Request, reason: str, error: str | None = None) -> None:
        if r in self.running:
            s, last = r.slot, len(self.running) - 1
            if s != last:  # keep running slots contiguous: move the last one here
                moved = self.running[last]
                self._swap_slots(s, last, max(moved.fed, len(self.slot_ids[s])))
                moved.slot = s
                self.running[s] = moved
            self.running.pop()
            r.slot = -1
        r.emit(Finished(reason, len(r.prompt_ids), len(r.out_ids), r.cached, error))

    def _swap_slots(self, a: int, b: int, length: int) -> None:
        """Exchange the first `length` cached positions (and token records) of slots a and b."""
        swap_slots(self.cache, a, b, length)
        self.slot_ids[a], self.slot_ids[b] = self.slot_ids[b], self.slot_ids[a]
        if self.drafter is not None:
            self.drafter.swap(a, b)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _seen(r: Request, vocab: int, device: torch.device) -> torch.Tensor | None:
    """The repetition-penalty mask (1, vocab) of a request's prompt and output so far, or None."""
    if r.params.repetition_penalty == 1.0:
        return None
    seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
    seen[0, torch.tensor(r.prompt_ids + r.out_ids, device=device)] = True
    return seen


# --- model work outside generation (run on the engine thread through `Engine.call`) --------------------------------


def embed(model: LlamaForCausalLM, ids: list[int], dims: int | None = None) -> torch.Tensor:
    """The mean-pooled, L2-normalised final hidden state of `ids` (one sequence, no padding, so a vector never
    depends on its neighbours), cut to its first `dims` values if given; on the CPU."""
    h = model(torch.tensor([ids], device=model.device), return_hidden=True)[0].float()  # (T, H)
    v = h.mean(0)
    if dims is not None:
        v = v[:dims]
    return torch.nn.functional.normalize(v, dim=0).cpu()


def prompt_logprobs(model: LlamaForCausalLM, ids: list[int], k: int) -> list[TokenLogprob | None]:
    """Each token's logprob given the tokens before it (None for the first) with its `k` most likely
    alternatives. The head is applied 256 positions at a time, so a long prompt never holds a (T, vocab) matrix."""
    h = model(torch.tensor([ids], device=model.device), return_hidden=True)[0]  # (T, H)
    out: list[TokenLogprob | None] = [None]
    for s in range(0, len(ids) - 1, 256):
        tgt = ids[s + 1: s + 257]
        lp = torch.log_softmax(model.head(h[s: s + len(tgt)]), -1)  # (n, V)
        chosen = lp.gather(1, torch.tensor(tgt, device=lp.device).view(-1, 1))[:, 0].tolist()
        top_v, top_i = lp.topk(max(k, 1), dim=-1)
        for j, t in enumerate(tgt):
            out.append(TokenLogprob(t, chosen[j], list(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist(),
                                                           strict=True))))
    return out
