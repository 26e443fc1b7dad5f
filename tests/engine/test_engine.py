"""The continuous-batching engine on a tiny random model: batch invariance, cancellation, limits, prefix reuse."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from corral.engine.engine import ContextLengthError, Engine, Finished, QueueFullError, Request
from corral.engine.sampling import SamplingParams
from corral.model.llama import KVCache
from corral.model.loader import load_model
from corral.text import Delta, text_events
from tests.test_text import AngleTokenizer, naive_greedy

STOPS = AngleTokenizer().stop_ids


@pytest.fixture
def tiny(make_tiny_hf):
    _, folder = make_tiny_hf(max_position_embeddings=512)
    return load_model(str(folder), device="cpu", dtype="float32").model


class Collector:
    """Gathers one request's events (through the text side, `text_events`); `wait()` until it finishes."""

    def __init__(self):
        self.ids: list[int] = []
        self.text = ""
        self.logprobs = []
        self.finished: Finished | None = None
        self.done = threading.Event()

    def __call__(self, ev):
        if isinstance(ev, Delta):
            self.ids += ev.token_ids
            self.text += ev.text
            self.logprobs += ev.logprobs or []
        else:
            self.finished = ev
            self.done.set()

    def wait(self) -> Collector:
        assert self.done.wait(60), "request did not finish"
        return self


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 250, (int(torch.randint(5, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def submit(eng: Engine, prompt: list[int], tok=None, constraint=None, **kw) -> Collector:
    """A request as the server makes one: the engine's token events through `text_events` (stop strings)."""
    c = Collector()
    top = kw.pop("top_logprobs", None)
    params = SamplingParams(**{"max_tokens": 24, **kw})
    req = Request(prompt, params, c, top_logprobs=top, constraint=constraint)
    req.emit = text_events(tok or AngleTokenizer(), params.stop, c, lambda: eng.cancel(req))
    eng.submit(req)
    return c


def alone_then_batched(eng: Engine, ps: list[list[int]]) -> list[list[int]]:
    """Each prompt alone, then all at once on the (not yet started) engine: the batched outputs must equal the
    lone ones. Returns the lone outputs; shuts the engine down."""
    eng.start()
    try:
        alone = [submit(eng, p).wait().ids for p in ps]
        batch = [submit(eng, p) for p in ps]
        assert [c.wait().ids for c in batch] == alone
    finally:
        eng.shutdown()
    return alone


@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["decode-kernel", "matmul-attention"])
def test_greedy_outputs_equal_alone_and_in_a_batch_of_16(tiny, cpu_kernels):
    """With corral's decode-attention kernel and with the batched-matmul attention it falls back to."""
    ps = prompts(16)
    eng = Engine(tiny, stop_ids=STOPS, max_batch=16, max_seq_len=256)
    if cpu_kernels and not tiny.cpu_kernels:
        pytest.skip("corral's CPU kernels did not build here (no C++ compiler?)")
    tiny.cpu_kernels = cpu_kernels
    alone = alone_then_batched(eng, ps)
    assert alone[0] == naive_greedy(tiny, ps[0], 24)


@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["decode-kernel", "matmul-attention"])
def test_a_q8_0_cache_keeps_outputs_equal_alone_and_batched(make_tiny_hf, cpu_kernels):
    """`--kv-dtype q8_0` off the decode plan: the PyTorch layers pack rows (`kv_pack`) and either attention reads
    them, the same bits alone and batched, logits close to an fp32 cache's."""
    _, folder = make_tiny_hf(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             max_position_embeddings=512)
    tiny = load_model(str(folder), device="cpu", dtype="float32").model
    ps = prompts(6)
    eng = Engine(tiny, stop_ids=STOPS, max_batch=6, max_seq_len=256, kv_dtype=torch.int8)
    if cpu_kernels and not tiny.cpu_kernels:
        pytest.skip("corral's CPU kernels did not build here (no C++ compiler?)")
    tiny.cpu_kernels = cpu_kernels
    assert eng.cache.k[0].dtype == torch.int8
    alone_then_batched(eng, ps)
    ids = ps[0] + naive_greedy(tiny, ps[0], 24)

    def stepwise(dtype):  # teacher-forced one-token steps over a cache of `dtype`
        cache = KVCache.allocate(tiny.config, 1, len(ids), dtype, "cpu")
        with torch.inference_mode():
            return torch.cat([tiny(torch.tensor([[t]]), torch.tensor([[i]]), cache, kv_len=i + 1,
                                   batch_invariant=True)[0] for i, t in enumerate(ids)])

    q8, bf16, full = stepwise(torch.int8), stepwise(torch.bfloat16), stepwise(torch.float32)
    # measured 0.030 relative against bf16's 0.0094: per-32 int8 rounds ~3x coarser than bf16's 8-bit mantissa
    assert (q8 - full).norm() < 5 * (bf16 - full).norm()


@pytest.mark.slow
def test_compiled_decode_is_batch_invariant_too(tiny):
    """`--compile`: four graphs (1 or more sequences, 1 or more KV blocks), made by warm_up; outputs alone = in a
    batch, with prompts that cross the 64-key block boundary while decoding."""
    ps = prompts(8)
    eng = Engine(tiny, stop_ids=STOPS, max_batch=8, max_seq_len=256, compile=True)
    eng.warm_up()
    eng.start()
    try:
        alone = [submit(eng, p, max_tokens=40).wait().ids for p in ps]
        batch = [submit(eng, p, max_tokens=40) for p in ps]
        assert [c.wait().ids for c in batch] == alone
    finally:
        eng.shutdown()


def test_a_prefill_moved_among_decoding_rows_is_packed_behind_them(tiny):
    """A finishes while C is still prefilling (in chunks of 16): C takes A's slot 0, in front of the decoding B;
    the next decode packs B back to slot 0. Every output still equals plain greedy decoding."""
    g = torch.Generator().manual_seed(5)
    a, b, c = (torch.randint(3, 250, (n,), generator=g).tolist() for n in (6, 9, 100))
    eng = Engine(tiny, stop_ids=STOPS, max_batch=3, max_seq_len=256, prefill_chunk=16)  # stepped by hand
    ca, cb = submit(eng, a, max_tokens=5), submit(eng, b, max_tokens=30)
    for _ in range(2):  # both prefilled
        eng.step()
    assert ca.finished is None
    cc = submit(eng, c, max_tokens=10)
    forward, decode_slots = eng._forward, []

    def spy(ids, positions, kv_len, slots, prefill=False):
        if not prefill:
            decode_slots.append(slots)
        return forward(ids, positions, kv_len, slots, prefill)

    eng._forward = spy
    swapped = False
    while not (cb.finished and cc.finished):
        eng.step()
        swapped |= ca.finished is not None and cc.finished is None and eng.running[0].prompt_ids == c
    assert swapped, "the test did not reach the state it is about"
    assert decode_slots and all(sl is None for sl in decode_slots)  # decode always read slots 0..n-1
    assert ca.ids == naive_greedy(tiny, a, 5) and cb.ids == naive_greedy(tiny, b, 30)
    assert cc.ids == naive_greedy(tiny, c, 10)


def test_more_requests_than_slots_all_finish_in_order_of_arrival(tiny):
    ps = prompts(10)
    eng = Engine(tiny, stop_ids=STOPS, max_batch=3, max_seq_len=128).start()
    try:
        cs = [submit(eng, p, max_tokens=8) for p in ps]
        for c, p in zip(cs, ps, strict=True):
            assert c.wait().finished.finish_reason == "length" and c.ids == naive_greedy(tiny, p, 8)
    finally:
        eng.shutdown()


def test_cancelled_request_frees_its_slot_at_the_next_step(tiny):
    eng = Engine(tiny, stop_ids=STOPS, max_batch=2, max_seq_len=128)  # stepped by hand
    c = submit(eng, prompts(1)[0], max_tokens=100)
    eng.step()
    eng.step()
    assert len(eng.running) == 1 and not c.done.is_set()
    eng.cancel(eng.running[0])
    eng.step()
    assert eng.running == [] and c.finished.finish_reason == "cancelled"
    assert eng.kv_tokens_used == 0


def test_limits_answer_at_once(tiny):
    eng = Engine(tiny, stop_ids=STOPS, max_batch=1, max_seq_len=64, max_queue=2)
    with pytest.raises(ContextLengthError, match="context"):
        submit(eng, [5] * 64)
    submit(eng, [5, 6])
    submit(eng, [5, 6])
    with pytest.raises(QueueFullError):
        submit(eng, [5, 6])


def test_prefix_reuse_skips_whole_chunks_and_changes_nothing(tiny):
    system = prompts(8)
    shared = sum(system, [])[:150]  # a long shared prefix: more than one 64-token chunk
    eng = Engine(tiny, stop_ids=STOPS, max_batch=2, max_seq_len=256, prefill_chunk=64).start()
    try:
        first = submit(eng, shared + [7, 8, 9]).wait()
        second = submit(eng, shared + [10, 11]).wait()
    finally:
        eng.shutdown()
    assert first.finished.cached_tokens == 0 and second.finished.cached_tokens == 128
    fresh = Engine(tiny, stop_ids=STOPS, max_batch=2, max_seq_len=256, prefill_chunk=64).start()
    try:
        assert submit(fresh, shared + [10, 11]).wait().ids == second.ids
    finally:
        fresh.shutdown()


def test_stop_strings_max_tokens_and_logprobs(tiny):
    p = prompts(1)[0]
    free = naive_greedy(tiny, p, 12)
    eng = Engine(tiny, stop_ids=STOPS, max_batch=2, max_seq_len=128).start()
    try:
        stop = f"<{free[3]}>"
        c = submit(eng, p, max_tokens=12, stop=[stop]).wait()
        assert c.finished.finish_reason == "stop" and stop not in c.text
        assert c.text == "".join(f"<{i}>" for i in free[: free.index(free[3])])
        # the text side cancelled the request in the engine at the hit: its tokens are counted up to the hit,
        # none after it reached the caller, and its slot is free
        hit = free.index(free[3]) + 1
        assert c.finished.completion_tokens == hit and c.ids == free[:hit]
        assert not eng.running and not eng.waiting
        lp = submit(eng, p, max_tokens=4, top_logprobs=3).wait()
    finally:
        eng.shutdown()
    with torch.inference_mode():
        ref = torch.log_softmax(tiny(torch.tensor([p]))[0, -1], -1)
    first = lp.logprobs[0]
    assert first.token_id == free[0] and abs(first.logprob - ref[free[0]].item()) < 1e-4
    assert [t for t, _ in first.top] == ref.topk(3).indices.tolist()


def test_run_until_idle_finishes_everything_on_the_calling_thread(tiny):
    ps = prompts(5)
    eng = Engine(tiny, stop_ids=STOPS, max_batch=2, max_seq_len=128)  # no thread of its own
    cs = [submit(eng, p, max_tokens=6) for p in ps]
    eng.run_until_idle()
    assert eng.running == [] and not eng.waiting
    for c, p in zip(cs, ps, strict=True):
        assert c.finished.finish_reason == "length" and c.ids == naive_greedy(tiny, p, 6)


def test_the_kv_cache_grows_with_use_and_shrinks_back_when_idle(tiny):
    """One slot of 256 positions at start; 16 long requests at once grow it to 16 slots of 512 (their outputs those
    of each request alone); idle, it shrinks to the one slot it keeps, whose prefix the next request still reuses."""
    g = torch.Generator().manual_seed(7)
    ps = [torch.randint(3, 250, (int(n),), generator=g).tolist() for n in torch.randint(260, 400, (16,), generator=g)]
    eng = Engine(tiny, stop_ids=STOPS, max_batch=16, max_seq_len=512, prefill_chunk=64)
    eng.idle_shrink_s = 0.2
    assert eng.kv_blocks == 256 // 64 and eng.kv_tokens_total == 16 * 512
    eng.start()
    try:
        alone = [submit(eng, p, max_tokens=12).wait().ids for p in ps[:3]]
        assert eng.cache.k[0].shape[0] == 1 < eng.cache.max_len // 64 <= 512 // 64  # one slot, grown in length
        batch = [submit(eng, p, max_tokens=12) for p in ps]
        grown = [c.wait().ids for c in batch]
        assert grown[:3] == alone
        assert eng.kv_blocks == 16 * 512 // 64
        deadline = time.monotonic() + 10
        while eng.kv_blocks > 512 // 64 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng.cache.k[0].shape[0] == 1 and eng.kv_blocks <= 512 // 64
        last = next(p for p in ps if eng.slot_ids[0][:len(p)] == p)  # the request that finished last
        again = submit(eng, last, max_tokens=12).wait()
        assert again.finished.cached_tokens >= 256 and again.ids == grown[ps.index(last)]
    finally:
        eng.shutdown()


def test_requests_behind_one_long_prefix_copy_it_from_the_first_and_change_nothing(tiny):
    """Eight requests at once with the same 200-token system prompt: the first prefills it, the others copy its
    keys and values (whole chunks) from that running slot instead of prefilling their own, and every answer is the
    one the request gets alone on a fresh engine."""
    g = torch.Generator().manual_seed(11)
    system = torch.randint(3, 250, (200,), generator=g).tolist()
    ps = [system + torch.randint(3, 250, (5 + i,), generator=g).tolist() for i in range(8)]
    eng = Engine(tiny, stop_ids=STOPS, max_batch=8, max_seq_len=512, prefill_chunk=64).start()
    try:
        together = [submit(eng, p, max_tokens=10) for p in ps]
        done = [c.wait() for c in together]
    finally:
        eng.shutdown()
    assert done[0].finished.cached_tokens == 0
    assert all(c.finished.cached_tokens == 192 for c in done[1:])  # three whole chunks of 64
    for p, c in zip(ps[::3], done[::3], strict=True):
        fresh = Engine(tiny, stop_ids=STOPS, max_batch=1, max_seq_len=512, prefill_chunk=64).start()
        try:
            assert submit(fresh, p, max_tokens=10).wait().ids == c.ids
        finally:
            fresh.shutdown()
