"""Verifiable token selection: a draw any node can recompute from the logits alone.

Token t of a request (t = 0-based index of the generated token) is chosen by
inverse CDF over the model's *adjusted* distribution with a counter-based uniform
u_t = U(seed, t):

1. the fp32 logits are widened to float64 and divided by the temperature;
2. top-k keeps the k largest logits (ties broken by lower token id);
3. softmax over the survivors; top-p keeps, in order of decreasing probability
   (ties: lower id first), every token whose preceding mass is still < top_p;
4. the CDF is accumulated over the kept tokens in ascending token-id order (the
   canonical order), and the token whose interval [C_{j-1}, C_j) holds u_t * C_last
   is chosen.

u_t comes from SHA-256(seed as 8 bytes big-endian || t as 8 bytes big-endian): the
first 53 bits as a float in [0, 1). So the draw depends only on the logits and
(seed, t): not on batch neighbours, thread counts, preemption and recompute, or the
order requests arrived in. A verifier that teacher-forces the revealed tokens
recomputes the same u_t and the same distribution (engine.recheck). Greedy
(temperature <= 0) is argmax, lowest id on ties (what torch.argmax returns), and
stays token-identical to Hugging Face `generate`.

A request without a seed gets `default_seed(request_id)`, so even an unseeded run
is reproducible from its id (the node passes a seed derived from the network's
request id; the engine's own request ids are only a fallback).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from engine.types import SamplingParams

MAX_SEED = 2**63 - 1


def uniform(seed: int, t: int) -> float:
    """u_t = U(seed, t) in [0, 1): 53 bits of SHA-256(seed || t), both 8-byte big-endian."""
    digest = hashlib.sha256(int(seed).to_bytes(8, "big") + int(t).to_bytes(8, "big")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def default_seed(request_id: str) -> int:
    """The seed of a request that did not give one: 63 bits of SHA-256 of its id."""
    digest = hashlib.sha256(b"rakis-seed\x00" + request_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def adjusted_probs(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    *,
    slack_p: float = 0.0,
    slack_logit: float = 0.0,
) -> torch.Tensor:
    """The adjusted distribution of each row of `logits` [N, V] as float64 [N, V].

    Removed tokens get probability 0; rows are not renormalised after top-p (the
    draw scales u by the row's total instead, which is exact). The slacks move the
    top-k / top-p cut-offs (a verifier's "what if the producer's rounding put the
    boundary elsewhere"); generation always uses 0. Exact tie rules without a full
    sort of the vocabulary: top-k via the k-th value, top-p via the top candidates
    (falling back to a full sort for a row whose cut-off lies beyond them).
    """
    if temperature <= 0:
        raise ValueError("adjusted_probs is for temperature > 0; greedy is argmax")
    x = logits.to(torch.float64) / float(temperature)
    vocab = x.shape[1]
    if 0 < top_k < vocab:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        if slack_logit == 0.0:
            above = x > kth
            tied = x == kth
            need = top_k - above.sum(dim=-1, keepdim=True)
            keep = above | (tied & (tied.cumsum(dim=-1) <= need))  # ties: lower ids first
        else:
            keep = x >= kth - slack_logit / float(temperature)
            keep |= x == x.amax(dim=-1, keepdim=True)  # never empty
        x = x.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(~_top_p_keep(probs, top_p + slack_p), 0.0)
    return probs


_TOP_P_CANDIDATES = 1024


def _top_p_keep(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask of tokens whose preceding mass (order: probability desc, id asc) < threshold."""
    n, vocab = probs.shape
    c = min(vocab, _TOP_P_CANDIDATES)
    cand_p, cand_i = torch.topk(probs, c, dim=-1)
    ids, perm = cand_i.sort(dim=-1)  # canonical tie order: ascending id, then stable by prob
    sp, order = torch.sort(cand_p.gather(1, perm), dim=-1, descending=True, stable=True)
    order = ids.gather(1, order)
    before = sp.cumsum(dim=-1) - sp
    keep_sorted = before < threshold
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep.scatter_(1, order, keep_sorted)
    if c == vocab:
        return keep
    # Exact only when the cut-off falls inside the candidates and every token left
    # out is strictly less likely than the first excluded candidate.
    n_kept = keep_sorted.sum(dim=-1, keepdim=True)
    first_out = sp.gather(1, n_kept.clamp(max=c - 1))[:, 0]
    exact = (n_kept[:, 0] < c) & (sp[:, -1] < first_out)
    for r in torch.nonzero(~exact).flatten().tolist():
        row_p, row_order = torch.sort(probs[r], descending=True, stable=True)
        row_keep = (row_p.cumsum(0) - row_p) < threshold
        row_keep[0] = True
        keep[r] = False
        keep[r, row_order[row_keep]] = True
    return keep


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF in ascending-id order: the j with C_{j-1} <= u * C_last < C_j, per row."""
    cdf = probs.cumsum(dim=-1)
    target = (u.to(torch.float64) * cdf[:, -1])[:, None]
    j = torch.searchsorted(cdf, target, right=True)[:, 0]
    # A zero-probability token never owns an interval: searchsorted(right=True) skips
    # them (their C_j equals C_{j-1}). Only a product u * C_last that rounds up to
    # C_last lands past the end; it belongs to the last kept token.
    vocab = probs.shape[1]
    for r in torch.nonzero(j >= vocab).flatten().tolist():
        j[r] = int(torch.nonzero(probs[r] > 0)[-1, 0])
    return j


def sample_row(logits: torch.Tensor, params: SamplingParams, seed: int, t: int) -> int:
    """The token the verifiable sampler picks for one fp32 logits row [V]."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = adjusted_probs(logits[None, :], params.temperature, params.top_p, params.top_k)
    return int(draw(probs, torch.tensor([uniform(seed, t)], dtype=torch.float64))[0])


def sample_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    seeds: Sequence[int],
    steps: Sequence[int],
) -> list[int]:
    """One token id per logits row: row i is token `steps[i]` of a request with `seeds[i]`."""
    greedy = logits.argmax(dim=-1).tolist()
    if all(p.temperature <= 0 for p in params):
        return greedy
    rows = logits.detach().to("cpu")
    groups: dict[tuple[float, float, int], list[int]] = {}
    for i, p in enumerate(params):
        if p.temperature > 0:
            groups.setdefault((float(p.temperature), float(p.top_p), int(p.top_k)), []).append(i)
    out = list(greedy)
    for (temp, top_p, top_k), idx in groups.items():  # rows with the same params: one pass
        probs = adjusted_probs(rows[idx], temp, top_p, top_k)
        u = torch.tensor([uniform(seeds[i], steps[i]) for i in idx], dtype=torch.float64)
        for i, tok in zip(idx, draw(probs, u).tolist(), strict=True):
            out[i] = tok
    return out
