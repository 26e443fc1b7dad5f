"""Speculative decoding: a small draft model proposes k tokens, the target checks them all in one forward.

Standard speculative sampling (Leviathan et al. 2023; Chen et al. 2023). With p the target's and q the draft's
distribution at a position, both after the request's own sampling transforms (logit bias, repetition penalty,
temperature, top-k, top-p, min-p), a draft token d is kept with probability min(1, p(d) / q(d)); at the first
rejection one token is drawn from the residual max(0, p - q), normalised; when all k are kept a bonus token is drawn
from p at the position after them. Every emitted token is then distributed exactly as the target alone samples it,
whatever the draft. Greedy (temperature 0): drafts are kept while they equal the target's argmax, so the output is
the target's greedy output. "Exactly" is up to floating point: the target scores k + 1 tokens per forward instead
of one, and a different matmul shape can round differently, which flips only exact near-ties of the argmax.

A round costs k draft forwards (one token each) and one target forward of k + 1 tokens, and one host sync: the
number of accepted tokens decides what comes next. Draft tokens are sampled on the device and fed back as tensors.
Rollback is free: the KV caches are static buffers, so a rejected position is forgotten by shortening the cache's
valid length (`slot_ids`) and written over later.

The draft must use the target's tokenizer (`corral.text.check_draft`); its embedding may have a different number
of rows (padding), so its logits are cut or padded with -inf to the target's width (`fit_vocab`), which keeps q a
distribution over ids the target can embed.

`BatchDrafter` gives the `Engine` a draft KV slot beside each of its own (`corral serve --draft-model`, and
`corral generate/chat --draft-model` through a one-slot engine).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.engine.kv_cache import swap_slots
from corral.engine.sampling import SamplingParams, draw, sample, sampling_weights
from corral.model import kernels
from corral.model.llama import KVCache, LlamaForCausalLM


def fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Draft logits (B, Vd) → (B, vocab): extra rows cut, missing ones -inf (the draft never proposes them)."""
    n = logits.shape[-1]
    if n == vocab:
        return logits
    if n > vocab:
        return logits[:, :vocab]
    return F.pad(logits, (0, vocab - n), value=float("-inf"))


def propose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
            seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw draft tokens from (B, V) draft logits: (B,) ids and the (B, V) distribution q they were drawn from
    (None when greedy: then the draft's argmax is proposed and no probabilities are needed)."""
    if params.temperature == 0:
        return sample(logits, params, None, seen), None
    w = sampling_weights(logits, params, seen)
    q = w / w.sum(-1, keepdim=True)
    return draw(q, generator), q


def seen_rows(seen: torch.Tensor | None, drafts: torch.Tensor) -> torch.Tensor | None:
    """Repetition-penalty masks for the k + 1 verified positions: row i also marks drafts 0..i-1 as seen."""
    if seen is None:
        return None
    rows = seen.expand(drafts.numel() + 1, -1).clone()  # (k+1, V)
    if drafts.numel():
        rows[1:] |= F.one_hot(drafts, rows.shape[-1]).cumsum(0).bool()
    return rows


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where to draw from after rejecting a draft token: max(0, p - q) (unnormalised; `draw` needs no sum). When
    it is all zero (p == q, so rejection had probability 0 and only rounding got here) p itself."""
    r = (p - q).clamp_min(0)
    return torch.where(r.sum(-1, keepdim=True) > 0, r, p)


def verify(p_logits: torch.Tensor, q: torch.Tensor | None, drafts: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None, seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept or reject one sequence's drafts, all on the device.

    p_logits (k+1, V): the target's logits after the fed token and after each draft; q (k, V): the draws' draft
    distributions (None: greedy); drafts (k,); seen (1, V) or None: the repetition-penalty mask before the drafts.
    Returns (tokens (k+1,), m): m (0-d) drafts are accepted and tokens[:m + 1] are the new tokens, the last
    being the correction (after a rejection) or the bonus (after k acceptances).
    """
    k = drafts.numel()
    rows = seen_rows(seen, drafts)
    if params.temperature == 0:
        best = sample(p_logits, params, None, rows)  # (k+1,) the target's greedy picks, transforms applied
        m = (drafts == best[:k]).long().cumprod(0).sum()
        return best, m
    p = sampling_weights(p_logits, params, rows)
    p = p / p.sum(-1, keepdim=True)
    q = p[:0] if q is None else q  # no drafts (k = 0): a plain target step, the "bonus" drawn from p
    idx = torch.arange(k, device=p.device)
    u = torch.rand(k, device=p.device, generator=generator)
    ok = u * q[idx, drafts] < p[idx, drafts]  # u < p/q without dividing by q
    m = ok.long().cumprod(0).sum()
    fallback = torch.cat([residual(p[:k], q), p[k:]])  # (k+1, V): row m is where token m comes from
    t = draw(fallback.index_select(0, m.view(1)), generator)  # (1,)
    tokens = torch.cat([drafts, t]).scatter(0, m.view(1), t)
    return tokens, m


def _plain_greedy(p: SamplingParams) -> bool:
    return p.temperature == 0 and p.repetition_penalty == 1.0 and not p.logit_bias


def propose_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                 seens: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """`propose` for a batch whose rows have their own sampling settings: (B,) ids and each row's (1, V) q."""
    ids = logits.argmax(-1)  # right for plain greedy rows, overwritten for the others
    qs: list[torch.Tensor | None] = [None] * len(params)
    for i, p in enumerate(params):
        if not _plain_greedy(p):
            d, qs[i] = propose(logits[i:i + 1], p, generators[i], seens[i])
            ids[i] = d[0]
    return ids, qs


class BatchDrafter:
    """The draft side of speculative decoding in the `Engine`: a draft model with a KV cache of one slot per
    engine slot. The engine moves a draft slot whenever it moves its own (`swap`), so a sequence's target and
    draft KV always sit at the same slot index and both models read plain cache views (`slots=None`).

    `slot_ids[s]` lists the tokens whose draft KV slot s holds, a prefix of the engine's `slot_ids[s]`. It may
    lag by one token (after a round that accepted all k drafts, the last draft was never fed to the draft model):
    each round therefore starts with a two-token draft forward of (the previous token, the pending one), which
    for every row covers the lag or rewrites a position already there. One fixed shape per round for every row,
    whatever its history: a row's draft forwards are the same alone or in a batch (batch invariance).
    """

    def __init__(self, model: LlamaForCausalLM, k: int, max_batch: int, cache_len: int, compile: bool = False,
                 batch_invariant: bool = True):
        self.model, self.k, self.invariant = model, k, batch_invariant
        kernels.use_for(model)
        # the CPU decode plan is one C++ call already (see Engine): nothing to compile
        self._step = torch.compile(model, dynamic=True) if compile and model.decode_plan is None else model
        self.cache = KVCache.allocate(model.config, max_batch, cache_len, model.dtype, model.device)
        self.slot_ids: list[list[int]] = [[] for _ in range(max_batch)]
        self.proposed = self.accepted = 0  # totals since start (acceptance rate = accepted / proposed)

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int, slots: torch.Tensor) -> None:
        """Feed one prefill chunk (the engine's own, same slot and positions) into the draft cache."""
        self.model(ids, positions, self.cache, kv_len=kv_len, slots=slots, last_only=True,
                   batch_invariant=self.invariant)

    def swap(self, a: int, b: int) -> None:
        """Exchange draft slots a and b (the used prefixes), as the engine does with its own."""
        swap_slots(self.cache, a, b, max(len(self.slot_ids[a]), len(self.slot_ids[b])))
        self.slot_ids[a], self.slot_ids[b] = self.slot_ids[b], self.slot_ids[a]

    def draft(self, prev: torch.Tensor, pending: torch.Tensor, fed: torch.Tensor, vocab: int,
              params: list[SamplingParams], generators: list[torch.Generator | None],
              seens: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """k draft tokens for rows in slots 0..B-1: prev (B,) the token at fed - 1, pending (B,) the one at fed.

        Returns drafts (B, k) and per row the (k, V) distributions they were drawn from (None: greedy)."""
        B, k = pending.shape[0], self.k
        top = int(fed.max())
        steps = torch.arange(-1, k, device=fed.device)
        pos = fed[:, None] + steps  # (B, k+1): positions fed-1, fed, fed+1, ...
        logits = self._step(torch.stack([prev, pending], 1), pos[:, :2], self.cache, kv_len=top + 1,
                            last_only=True, batch_invariant=self.invariant)[:, -1]
        seens = [s.clone() if s is not None else None for s in seens]
        drafts, qs = [], []
        for j in range(k):
            d, q = propose_rows(fit_vocab(logits, vocab), params, generators, seens)
            drafts.append(d)
            qs.append(q)
            for i, s in enumerate(seens):
                if s is not None:
                    s[0, d[i]] = True
            if j + 1 < k:
                logits = self._step(d.view(B, 1), pos[:, j + 2:j + 3], self.cache, kv_len=top + j + 2,
                                    last_only=True, batch_invariant=self.invariant)[:, -1]
        per_row = [None if qs[0][i] is None else torch.cat([q[i] for q in qs]) for i in range(B)]
        return torch.stack(drafts, 1), per_row


def verify_rows(logits: torch.Tensor, qs: list[torch.Tensor | None], drafts: torch.Tensor,
                params: list[SamplingParams], generators: list[torch.Generator | None],
                seens: list[torch.Tensor | None]) -> torch.Tensor:
    """`verify` for a batch: logits (B, k+1, V), drafts (B, k) → (B, k+2) rows of [m, tokens...]."""
    B, k = drafts.shape
    best = logits.argmax(-1)  # (B, k+1): plain greedy rows, vectorised
    out = torch.cat([(drafts == best[:, :k]).long().cumprod(1).sum(1, keepdim=True), best], 1)
    for i, p in enumerate(params):
        if not _plain_greedy(p):
            tokens, m = verify(logits[i], qs[i], drafts[i], p, generators[i], seens[i])
            out[i, 0], out[i, 1:] = m, tokens
    return out
