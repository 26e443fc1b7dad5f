"""Speculative decoding on tiny random models: greedy output equals the target's alone, sampled output keeps the
target's distribution (and the check that says so fails when the residual step is broken), acceptance is counted,
a draft with another tokenizer is refused, the engine keeps its batch invariance, and the CLI end to end."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import pytest
import torch

from corral.config import ModelConfig
from corral.engine import speculative
from corral.engine.engine import Engine
from corral.engine.sampling import SamplingParams, sampling_weights
from corral.engine.speculative import fit_vocab
from corral.errors import InvalidArgumentError
from corral.model.llama import LlamaForCausalLM
from corral.text import DraftModelError, Session, check_draft
from tests.engine.test_engine import STOPS, prompts, submit
from tests.test_text import PROMPT, AngleTokenizer, naive_greedy

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, rope_theta=10000.0)


def tiny(seed: int, layers: int = 2, vocab: int = 256) -> LlamaForCausalLM:
    """A random-weight Llama (std 0.2: peaky distributions, like a trained model's)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(ModelConfig(vocab_size=vocab, num_hidden_layers=layers, **TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return model


def first_layers(model: LlamaForCausalLM, n: int) -> LlamaForCausalLM:
    """A depth-pruned copy: the first n decoder layers, the same embedding and head."""
    draft = copy.deepcopy(model)
    draft.model.layers = torch.nn.ModuleList(list(draft.model.layers)[:n])
    draft.config = dataclasses.replace(model.config, num_hidden_layers=n)
    return draft


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny(0)


@pytest.fixture(scope="module")
def drafts(target) -> dict[str, LlamaForCausalLM]:
    return {"self": target, "pruned": first_layers(target, 1), "stranger": tiny(1, layers=1),
            "wider-vocab": tiny(2, layers=1, vocab=300)}


@pytest.fixture
def one_thread():
    """Many tiny forwards: one thread avoids OpenMP wake-ups on a shared machine (7x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


GREEDY_PROMPTS = [PROMPT, [7, 3, 250, 250, 1], list(range(40, 70))]


# --- greedy: the target's own output ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 4, 7])
@pytest.mark.parametrize("name", ["self", "pruned", "stranger", "wider-vocab"])
def test_greedy_output_equals_the_target_alone(target, drafts, name, k, one_thread):
    plain = Session(target, AngleTokenizer())
    spec = Session(target, AngleTokenizer(), draft=drafts[name], draft_tokens=k)  # one session: caches reused
    for prompt in GREEDY_PROMPTS:
        want = plain.generate(prompt, SamplingParams(max_tokens=30))
        got = spec.generate(prompt, SamplingParams(max_tokens=30))
        assert got.token_ids == want.token_ids
        assert got.draft_proposed > 0 and 0 <= got.draft_accepted <= got.draft_proposed
        if name == "self":
            assert got.acceptance_rate == 1.0
        if name == "stranger":
            assert got.acceptance_rate < 0.3
    assert want.token_ids == naive_greedy(target, prompt, 30)
    follow = prompt + want.token_ids[:5] + [9, 9]  # a chat's next turn: both caches reuse a prefix
    got = spec.generate(follow, SamplingParams(max_tokens=12))
    assert got.cached_tokens > 0 and got.token_ids == naive_greedy(target, follow, 12)


def test_greedy_with_repetition_penalty_and_logit_bias(target, drafts, one_thread):
    p = SamplingParams(max_tokens=30, repetition_penalty=1.5, logit_bias={3: 2.0, 77: -1.0})
    want = Session(target, AngleTokenizer()).generate(PROMPT, p)
    for name in ("self", "pruned"):
        got = Session(target, AngleTokenizer(), draft=drafts[name], draft_tokens=4).generate(PROMPT, p)
        assert got.token_ids == want.token_ids
    assert got.draft_accepted > 0


def test_acceptance_is_counted_and_stops_end_a_round(target, drafts, one_thread):
    free = Session(target, AngleTokenizer()).generate(PROMPT, SamplingParams(max_tokens=30))
    stop = free.token_ids[9]
    gen = Session(target, AngleTokenizer(stop_ids={stop}), draft=drafts["self"], draft_tokens=4)
    res = gen.generate(PROMPT, SamplingParams(max_tokens=30))
    assert res.finish_reason == "stop" and res.token_ids == free.token_ids[:free.token_ids.index(stop)]
    assert res.draft_accepted == res.draft_proposed > 0 and res.acceptance_rate == 1.0
    # a round that reaches max_tokens ends the request there, whatever it accepted
    res = gen.generate(PROMPT, SamplingParams(max_tokens=3, ignore_eos=True))
    assert res.completion_tokens == 3 and res.token_ids == free.token_ids[:3] and res.draft_proposed == 4
    sampled = gen.generate(PROMPT, SamplingParams(max_tokens=30, temperature=1.0, seed=0, ignore_eos=True))
    assert sampled.acceptance_rate > 0.95  # p == q up to rounding: nearly every draft is kept


def test_context_limit_with_drafts(target, drafts):
    gen = Session(target, AngleTokenizer(), max_seq_len=48, draft=drafts["pruned"], draft_tokens=7)
    res = gen.generate(list(range(3, 40)), SamplingParams(max_tokens=100))
    assert res.completion_tokens == 12 and res.finish_reason == "length"  # 11 fed, the last one never is
    assert res.token_ids == naive_greedy(target, list(range(3, 40)), 12)


# --- sampling: the target's distribution ------------------------------------------------------------------------

V = 16  # a tiny vocabulary, so exact marginals of several tokens are cheap to enumerate
SAMPLED_PROMPT = [3, 1, 4, 1, 5, 9]
RUNS = 1500


def exact_marginals(model: LlamaForCausalLM, prompt: list[int], params: SamplingParams, n: int) -> list[torch.Tensor]:
    """The target's own distribution of output tokens 1..n (each marginalised over the earlier ones), with the
    sampling transforms applied, by enumerating every continuation (V^(n-1) contexts for the last)."""
    joint = torch.ones(1)  # over the contexts of the current length, flattened
    ctx = torch.tensor([prompt])
    out = []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(ctx)[:, -1]  # (C, V)
            seen = None
            if params.repetition_penalty != 1.0:
                seen = torch.zeros(len(ctx), V, dtype=torch.bool).scatter_(1, ctx, True)
            w = sampling_weights(logits, params, seen)
            cond = w / w.sum(-1, keepdim=True)  # (C, V)
            joint = (joint[:, None] * cond).reshape(-1)
            out.append(joint.view(-1, V).sum(0))
            ctx = torch.cat([ctx.repeat_interleave(V, 0), torch.arange(V).repeat(len(ctx))[:, None]], 1)
    return out


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of counts against probs; cells expecting < 5 are pooled."""
    expect = probs.double() * counts.sum()
    big = expect >= 5
    obs, exp = counts.double()[big], expect[big]
    if (~big).any():
        obs, exp = torch.cat([obs, counts.double()[~big].sum().view(1)]), torch.cat([exp, expect[~big].sum().view(1)])
    stat = ((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum()
    dof = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def empirical(outputs: list[list[int]], n: int) -> list[torch.Tensor]:
    return [torch.bincount(torch.tensor([o[i] for o in outputs]), minlength=V) for i in range(n)]


SAMPLERS = {
    "plain": SamplingParams(max_tokens=4, temperature=1.0),
    "transforms": SamplingParams(max_tokens=4, temperature=0.8, top_k=10, top_p=0.9, min_p=0.02,
                                 repetition_penalty=1.3),
}


@pytest.fixture(scope="module")
def small():
    """A V=16 target and a draft that shares its first layer: they agree often, but not always."""
    t = tiny(0, vocab=V)
    return t, first_layers(t, 1)


def generator_samples(t, d, params) -> list[list[int]]:
    gen = Session(t, AngleTokenizer(V), draft=d, draft_tokens=3)
    outs, acc = [], []
    for seed in range(RUNS):
        res = gen.generate(SAMPLED_PROMPT, dataclasses.replace(params, seed=seed, ignore_eos=True))
        outs.append(res.token_ids)
        acc.append(res.acceptance_rate)
    rate = sum(acc) / len(acc)
    assert 0.2 < rate < 0.95, f"acceptance {rate:.2f}: the test needs drafts that are often, not always, kept"
    return outs


def min_pvalue(model, outputs, params) -> float:
    want = exact_marginals(model, SAMPLED_PROMPT, params, 4)
    # Token 1 comes from the prompt's logits (no drafting); tokens 2-4 come from verify rounds (accepted drafts,
    # residual draws after rejections, bonus tokens).
    return min(chi2_pvalue(c, p) for c, p in zip(empirical(outputs, 4)[1:], want[1:], strict=True))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampled_tokens_follow_the_target_distribution(small, name, one_thread):
    t, d = small
    assert min_pvalue(t, generator_samples(t, d, SAMPLERS[name]), SAMPLERS[name]) > 1e-3


def test_the_distribution_check_catches_a_broken_residual(small, monkeypatch, one_thread):
    """The same check must fail if, after a rejection, the token is drawn from p instead of max(0, p - q)."""
    t, d = small
    monkeypatch.setattr(speculative, "residual", lambda p, q: p)
    assert min_pvalue(t, generator_samples(t, d, SAMPLERS["plain"]), SAMPLERS["plain"]) < 1e-6


def test_engine_sampled_tokens_follow_the_target_distribution(small, one_thread):
    t, d = small
    params = SAMPLERS["transforms"]
    eng = Engine(t, stop_ids=AngleTokenizer(V).stop_ids, max_batch=16, max_seq_len=64, draft=d, draft_tokens=3)
    outs = []
    for start in range(0, RUNS, 250):  # the engine's queue holds 256
        batch = [submit(eng, SAMPLED_PROMPT, max_tokens=4, temperature=params.temperature, top_k=params.top_k,
                        top_p=params.top_p, min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                        seed=s, ignore_eos=True) for s in range(start, min(start + 250, RUNS))]
        eng.run_until_idle()
        outs += [c.ids for c in batch]
    assert all(len(o) == 4 for o in outs)
    assert 0.2 < eng.drafter.accepted / eng.drafter.proposed < 0.95
    assert min_pvalue(t, outs, params) > 1e-3


def test_verify_residual_and_bonus_by_hand():
    """k = 1 with p = [.5, .5, 0], q = [1, 0, 0]: draft 0 is kept with p/q = 1/2; a rejection draws from
    max(0, p - q) = [0, .5, 0], i.e. always token 1; the bonus after acceptance comes from p's second row."""
    p_logits = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    q = torch.tensor([[1.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    seen = Counter()
    for _ in range(2000):
        tokens, m = speculative.verify(p_logits, q, torch.tensor([0]), SamplingParams(temperature=1.0), g, None)
        seen[tuple(tokens[:int(m) + 1].tolist())] += 1
    assert set(seen) == {(1,), (0, 2)}
    assert abs(seen[(0, 2)] / 2000 - 0.5) < 0.05


def test_fit_vocab():
    x = torch.randn(2, 5)
    assert torch.equal(fit_vocab(x, 3), x[:, :3])
    y = fit_vocab(x, 7)
    assert torch.equal(y[:, :5], x) and torch.isinf(y[:, 5:]).all()


# --- the tokenizer check ----------------------------------------------------------------------------------------


class RenamedTokenizer(AngleTokenizer):
    def piece(self, token_id: int) -> str:
        return "<x>" if token_id == 17 else super().piece(token_id)


def test_a_draft_with_another_tokenizer_is_refused():
    check_draft(AngleTokenizer(), AngleTokenizer())
    with pytest.raises(DraftModelError, match="128 tokens.*256"):
        check_draft(AngleTokenizer(256), AngleTokenizer(128), "big.gguf", "small")
    with pytest.raises(DraftModelError, match="token 17"):
        check_draft(AngleTokenizer(), RenamedTokenizer())
    with pytest.raises(InvalidArgumentError, match="draft-tokens"):
        Session(tiny(0), AngleTokenizer(), draft=tiny(0), draft_tokens=0)


# --- the engine (corral serve) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,k", [("self", 4), ("pruned", 1), ("stranger", 7)])
def test_engine_greedy_equals_target_alone_and_in_a_batch(target, drafts, name, k, one_thread):
    ps = prompts(8)
    eng = Engine(target, stop_ids=STOPS, max_batch=8, max_seq_len=128, draft=drafts[name], draft_tokens=k)
    alone = []
    for p in ps:
        c = submit(eng, p)
        eng.run_until_idle()
        alone.append(c.ids)
    batch = [submit(eng, p) for p in ps]
    eng.run_until_idle()
    assert [c.ids for c in batch] == alone
    assert alone == [naive_greedy(target, p, 24) for p in ps]
    rate = eng.drafter.accepted / eng.drafter.proposed
    assert rate == 1.0 if name == "self" else rate < 0.5


def test_engine_mixes_speculative_and_per_token_rows(target, drafts, one_thread):
    """Sampled rows, a logprobs row, a row that runs into the context end, and a row finishing mid-round
    (max_tokens not a multiple of k + 1) share the batch; every greedy row still equals plain decoding."""
    ps = prompts(5)
    eng = Engine(target, stop_ids=STOPS, max_batch=8, max_seq_len=64, draft=drafts["pruned"], draft_tokens=3)
    eng.warm_up()  # the speculative shapes too; its scratch KV must not leak into the requests below
    sampled = [submit(eng, ps[i], temperature=1.0, seed=i, repetition_penalty=1.2) for i in range(2)]
    lp = submit(eng, ps[2], top_logprobs=2, max_tokens=10)
    long = submit(eng, ps[3], max_tokens=500)
    odd = submit(eng, ps[4], max_tokens=7)
    eng.run_until_idle()
    assert all(len(c.ids) == 24 and c.finished.finish_reason == "length" for c in sampled)
    assert lp.ids == naive_greedy(target, ps[2], 10) and len(lp.logprobs) == 10
    plain = Engine(target, stop_ids=STOPS, max_batch=1, max_seq_len=64)
    alone = submit(plain, ps[3], max_tokens=500)
    plain.run_until_idle()
    assert long.ids == alone.ids and long.finished.finish_reason == alone.finished.finish_reason == "length"
    assert long.ids == naive_greedy(target, ps[3], len(long.ids))
    assert odd.ids == naive_greedy(target, ps[4], 7)


def test_engine_refuses_too_many_draft_tokens(target):
    with pytest.raises(InvalidArgumentError, match="1 to 7"):
        Engine(target, stop_ids=STOPS, max_batch=2, max_seq_len=64, draft=target, draft_tokens=8)


# --- the command line -------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_folders(make_tiny_hf, tok, write_tiktoken_model):
    """Two tiny HF models with the default tokenizer (target: 2 layers, draft: 1) and one with another tokenizer."""
    out = {}
    for name, layers in (("target", 2), ("draft", 1)):
        _, folder = make_tiny_hf(name=name, vocab_size=tok.vocab_size, num_hidden_layers=layers)
        (folder / "tokenizer.json").write_text(tok._tok.to_str())
        out[name] = folder
    _, other = make_tiny_hf(name="other", vocab_size=600, num_hidden_layers=1)
    write_tiktoken_model(other / "tokenizer.model", 40)
    out["other"] = other
    return out


def test_cli_generate_with_a_draft_model_reports_acceptance(tiny_folders):
    from tests.cli.test_cli import assert_clean_error, run_cli

    t, d = str(tiny_folders["target"]), str(tiny_folders["draft"])
    plain = run_cli("generate", t, "hello there", "--max-tokens", "12", "--threads", "1")
    r = run_cli("generate", t, "hello there", "--max-tokens", "12", "--threads", "1", "--draft-model", d,
                "--draft-tokens", "3", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout == plain.stdout  # greedy: the same text
    assert "draft acceptance" in r.stderr and "tok/s" in r.stderr
    bad = run_cli("generate", t, "hi", "--draft-model", str(tiny_folders["other"]))
    assert_clean_error(bad, "--draft-model", "its tokenizer has", "49152")


def test_serve_builds_a_speculative_engine(tiny_folders):
    from corral.cli import parse
    from corral.cli.common import build_service

    cfg = parse(["serve", str(tiny_folders["target"]), "--draft-model", str(tiny_folders["draft"]), "--draft-tokens",
                 "2", "--max-seq-len", "64", "--max-batch", "2"])
    _, engine, _ = build_service(cfg)
    assert engine.drafter is not None and engine.drafter.k == 2
    c = submit(engine, [5, 6, 7], max_tokens=6)
    engine.run_until_idle()
    assert len(c.ids) == 6 and engine.drafter.proposed > 0

    from prometheus_client.parser import text_string_to_metric_families

    from corral.serve.metrics import Metrics

    seen = {s.name: s.value for fam in text_string_to_metric_families(Metrics(engine, "t").render().decode())
            for s in fam.samples}
    assert seen["corral_spec_decode_num_draft_tokens_total"] == engine.drafter.proposed
    assert seen["corral_spec_decode_num_accepted_tokens_total"] == engine.drafter.accepted


def test_engine_on_the_default_4bit_model_keeps_plain_greedy_output():
    """The real model, 4-bit weights (bf16 activations in its matmuls): the verify forward's attention is computed
    token by token as a one-token decode does, so every request's greedy text equals plain decoding's. Before,
    a (k + 1)-row attention matmul took another kernel path and moved logits by up to 0.6 (near-ties flipped)."""
    from corral.chat import encode_chat
    from corral.engine.engine import Request
    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    lm = load_model(None)
    tok = load_tokenizer(lm.path)
    questions = ["Why is the sky blue?", "Give three tips for a tidy desk.", "What is a lighthouse for?",
                 "Describe rain on a tin roof.", "How do bees find their way home?", "Write a haiku about tea.",
                 "Explain what a compass does.", "Plan a picnic for four people."]

    def run(draft):
        eng = Engine(lm.model, stop_ids=tok.stop_ids, max_batch=8, max_seq_len=256, draft=draft, draft_tokens=4)
        reqs = [eng.submit(Request(encode_chat(tok, [{"role": "user", "content": q}]), SamplingParams(max_tokens=96),
                                   lambda e: None)) for q in questions]
        eng.run_until_idle()
        return [r.out_ids for r in reqs], eng

    plain, _ = run(None)
    spec, eng = run(load_model(None).model)  # the model as its own draft: nearly every token comes from a verify
    assert spec == plain
    assert eng.drafter.proposed > 0
