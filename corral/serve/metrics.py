"""Prometheus metrics (`GET /metrics`): requests, tokens, latencies, queue depth and KV cache use, and the shields'
checks, blocks (by shield and category), latency and unparsed verdicts.

Names follow vLLM's where one exists (`..._time_to_first_token_seconds`, `..._inter_token_latency_seconds`), with a
`corral_` prefix, so existing dashboards need only the prefix changed. Each app has its own registry. With a draft
model (`--draft-model`), `corral_spec_decode_num_draft_tokens_total` and `..._num_accepted_tokens_total` (vLLM's
names) give the acceptance rate as their ratio.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from corral.engine.engine import Engine, Finished
from corral.serve.bridge import Hooks

_LATENCY = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80)


class Metrics(Hooks):
    def __init__(self, engine: Engine, model_id: str, watts: float | None = None):
        self.registry = r = CollectorRegistry()
        lbl = {"model": model_id}
        self.requests = Counter("corral_requests", "Finished generation requests", ["model", "endpoint",
                                "finish_reason"], registry=r)
        self.http = Counter("corral_http_requests", "HTTP requests by route and status", ["route", "status"],
                            registry=r)
        self.prompt_tokens = Counter("corral_prompt_tokens", "Prompt tokens of finished requests", ["model"],
                                     registry=r).labels(**lbl)
        self.cached_tokens = Counter("corral_prompt_tokens_cached", "Prompt tokens whose KV was reused",
                                     ["model"], registry=r).labels(**lbl)
        self.generation_tokens = Counter("corral_generation_tokens", "Generated tokens", ["model"],
                                         registry=r).labels(**lbl)
        self.ttft = Histogram("corral_time_to_first_token_seconds", "Time from arrival to the first token",
                              ["model"], buckets=_LATENCY, registry=r).labels(**lbl)
        self.itl = Histogram("corral_inter_token_latency_seconds", "Time between consecutive tokens of a request",
                             ["model"], buckets=_LATENCY, registry=r).labels(**lbl)
        self.e2e = Histogram("corral_e2e_request_latency_seconds", "Time from arrival to the last token",
                             ["model"], buckets=_LATENCY, registry=r).labels(**lbl)
        Gauge("corral_num_requests_running", "Requests holding a KV slot", ["model"], registry=r).labels(
            **lbl).set_function(lambda: len(engine.running))
        Gauge("corral_num_requests_waiting", "Requests queued for a KV slot", ["model"], registry=r).labels(
            **lbl).set_function(lambda: len(engine.waiting))
        Gauge("corral_kv_cache_usage_ratio", "Fraction of the KV cache budget holding live tokens", ["model"],
              registry=r).labels(**lbl).set_function(lambda: engine.kv_tokens_used / engine.kv_tokens_total)
        Gauge("corral_kv_cache_tokens_used", "KV cache entries holding live tokens", ["model"],
              registry=r).labels(**lbl).set_function(lambda: engine.kv_tokens_used)
        Gauge("corral_kv_cache_tokens_total", "KV cache budget in tokens", ["model"], registry=r).labels(
            **lbl).set(engine.kv_tokens_total)
        Gauge("corral_kv_cache_blocks", "KV blocks allocated now (64 positions of one slot, every layer); the cache "
              "grows with use and shrinks when idle", ["model"], registry=r).labels(**lbl).set_function(
            lambda: engine.kv_blocks)
        Gauge("corral_kv_cache_bytes", "Bytes of KV cache allocated now", ["model"], registry=r).labels(
            **lbl).set_function(lambda: engine.kv_bytes)
        # vLLM's prefix-cache counters, in tokens: hits / queries is the prefix cache's hit rate.
        self.prefix_queries = Counter("corral_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                      ["model"], registry=r).labels(**lbl)
        self.prefix_hits = Counter("corral_prefix_cache_hits", "Prompt tokens found in the prefix cache (KV reused)",
                                   ["model"], registry=r).labels(**lbl)
        Gauge("corral_kv_slots_free", "KV slots with no running request", ["model"], registry=r).labels(
            **lbl).set_function(lambda: engine.max_batch - len(engine.running))
        self.steps = Gauge("corral_engine_steps", "Engine scheduling steps so far", ["model"], registry=r).labels(
            **lbl)
        self.steps.set_function(lambda: engine.steps)
        # Shields (corral serve --guard / --injection-shield). shield: input | output | injection | moderation;
        # category: a taxonomy code, "injection", "unchecked" (the guard could not read it) or "unspecified".
        self.guard_checks = Counter("corral_guard_checks", "Conversations or texts the shields checked", ["shield"],
                                    registry=r)
        self.guard_blocks = Counter("corral_guard_blocks", "Requests or answers a shield blocked, by category",
                                    ["shield", "category"], registry=r)
        self.guard_latency = Histogram("corral_guard_latency_seconds", "Time from asking a shield to its verdict "
                                       "(waiting for the engine thread included)", ["shield"], buckets=_LATENCY,
                                       registry=r)
        self.guard_parse_errors = Counter("corral_guard_parse_errors", "Guard outputs that were not a verdict "
                                          "(decided by the guard's on_parse_error policy)", ["shield"], registry=r)
        if engine.drafter is not None:
            r.register(_DraftCounters(engine, model_id))
        r.register(_EnergyCounter(model_id, watts))
        self.model_id = model_id

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def on_token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def on_finished(self, endpoint: str, ev: Finished, seconds: float) -> None:
        self.requests.labels(self.model_id, endpoint, ev.finish_reason).inc()
        self.prompt_tokens.inc(ev.prompt_tokens)
        self.cached_tokens.inc(ev.cached_tokens)
        self.prefix_queries.inc(ev.prompt_tokens)
        self.prefix_hits.inc(ev.cached_tokens)
        self.generation_tokens.inc(ev.completion_tokens)
        self.e2e.observe(seconds)

    def on_guard_check(self, shield: str, seconds: float, parsed: bool) -> None:
        self.guard_checks.labels(shield).inc()
        self.guard_latency.labels(shield).observe(seconds)
        if not parsed:
            self.guard_parse_errors.labels(shield).inc()

    def on_guard_block(self, shield: str, categories: list[str]) -> None:
        for c in categories:  # a block with two categories counts under each
            self.guard_blocks.labels(shield, c).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DraftCounters:
    """The drafter's running totals (kept by the engine, read when /metrics is scraped) as two counters."""

    def __init__(self, engine: Engine, model_id: str):
        self.engine, self.model_id = engine, model_id

    def collect(self) -> Iterator[CounterMetricFamily]:
        sp = self.engine.drafter
        for name, doc, value in (
                ("corral_spec_decode_num_draft_tokens", "Draft tokens the model checked", sp.proposed),
                ("corral_spec_decode_num_accepted_tokens", "Draft tokens the model accepted", sp.accepted)):
            c = CounterMetricFamily(name, doc, labels=["model"])
            c.add_metric([self.model_id], value)
            yield c


class _EnergyCounter:
    """`corral_energy_joules_total{source}`: energy since the server started, from RAPL or NVML counters where
    readable (source "rapl" / "nvml"), else the declared watts x uptime ("declared"; `--hardware`, corral cost)."""

    def __init__(self, model_id: str, watts: float | None):
        from corral.cost import EnergyMeter, Hardware

        self.meter = EnergyMeter(Hardware.load(None).watts if watts is None else watts)
        self.model_id = model_id

    def collect(self) -> Iterator[CounterMetricFamily]:
        c = CounterMetricFamily("corral_energy_joules", "Energy used since the server started", labels=["model",
                                                                                                          "source"])
        c.add_metric([self.model_id, self.meter.source], self.meter.joules())
        yield c
