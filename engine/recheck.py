"""Proof of inference by re-execution: is a revealed output what the sampler draws?

A verifier teacher-forces the revealed output after the prompt (one prefill pass,
scheduled by EngineCore at consensus priority and sharing the prompt's prefix-cache
blocks), and at each generated position t recomputes the adjusted distribution and
u_t = U(seed, t) exactly as engine.sampling does when generating. The revealed token
must be the one the sampler picks, and the output must stop where the sampler stops
(EOS, a stop string, max_tokens, the model's context).

Honest machines differ in rounding (threads, batch shape, chunked-prefill split,
dtype), so a mismatch is tolerated as *suspect* when it sits within the measured
noise: at T > 0 when u_t lies within `eps_cdf` of the revealed token's CDF interval
(also under top-p / top-k cut-offs moved by that noise), at T = 0 when the revealed
token's logit is within `eps_logit` of the maximum. At most `max_suspect` suspect
positions are tolerated per output; any other mismatch fails it. The defaults are
calibrated by scripts/calibrate_recheck.py (docs/consensus.md, "Re-check
calibration"), never guessed.

Output as text: the wire carries text, so the verifier tokenizes it the way the
engine's tokenizer encodes text (`tokenizer(text, add_special_tokens=False)`) and
requires that decoding those ids gives the text back. A byte-level BPE does not
always re-tokenize a sampled sequence into the same ids: the sampler may pick a
non-canonical split ("Hel" + "lo" where the tokenizer says "Hello"). So where a
re-tokenized token is not the sampler's pick but the pick's text continues the
revealed text exactly, the verifier follows the pick and re-tokenizes only the
rest ("realign"), restarting the pass there (the prefix cache keeps what is
already computed). The text then passes iff the sampler's own token path decodes
to it. Left uncovered: a pick that ends inside a multi-byte character (its text
is not a whole-character prefix), which fails as token_mismatch. Token ids avoid
all of this: pass `output_token_ids` whenever they are available. The measured
round-trip rate is in docs/consensus.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.sampling import adjusted_probs, uniform
from engine.types import PositionDetail, RecheckResult, SamplingParams

_ROWS_PER_CHUNK = 32  # float64 [rows, V] temporaries stay a few tens of MB


@dataclass(frozen=True)
class RecheckTolerance:
    """How much honest floating-point noise the verifier forgives.

    eps_cdf: CDF distance (total mass 1) within which u_t may sit outside the
    revealed token's interval; it also moves the top-p cut-off. eps_logit: logit
    gap under which two tokens count as tied (greedy, top-k cut-off). max_suspect:
    tolerated suspect positions per output.
    """

    eps_cdf: float = 1e-3
    eps_logit: float = 0.01
    max_suspect: int = 2
    suspect_per_100: float = 0.0  # extra budget per 100 output tokens

    def __post_init__(self) -> None:
        if not (
            self.eps_cdf >= 0 and self.eps_logit >= 0 and self.max_suspect >= 0 and self.suspect_per_100 >= 0
        ):
            raise ValueError("tolerances must be >= 0")

    def budget(self, num_tokens: int) -> int:
        """Suspect positions tolerated in an output of num_tokens tokens."""
        return self.max_suspect + int(num_tokens * self.suspect_per_100 / 100)


DEFAULT_TOLERANCE = RecheckTolerance()


MAX_REALIGNS = 32  # text mode: re-tokenizations of one output before giving up


@dataclass(frozen=True)
class _Judgement:
    status: str  # ok | suspect | bad
    picked: int
    margin: float
    lo: float
    hi: float
    dist: float = 0.0


class RecheckState:
    """Per-output verdict, fed the verifier's logits chunk by chunk (worker thread).

    Row t of the teacher-forced pass predicts generated token t; t == len(output)
    is the row after the output, which decides whether the sampler stops there.
    Rows are idempotent: a preempted and recomputed sequence re-feeds rows already
    seen, and they are skipped.
    """

    def __init__(
        self,
        request_id: str,
        params: SamplingParams,
        seed: int,
        output_ids: list[int],
        *,
        eos_token_ids: set[int],
        ended_by_stop: bool,
        context_left: int,
        would_stop: Callable[[list[int]], bool] | None,
        realign: Callable[[list[int], int, int], list[int] | None] | None = None,
        tolerance: RecheckTolerance = DEFAULT_TOLERANCE,
        details: bool = False,
    ) -> None:
        self.request_id = request_id
        self.params = params
        self.seed = seed
        self.output = list(output_ids)
        self.eos = eos_token_ids
        self.tol = tolerance
        self.ended_by_stop = ended_by_stop
        self.context_left = context_left  # output tokens that fit the model's context
        self.would_stop = would_stop
        # Text mode: (ids, t, picked) -> the output re-tokenized to follow the sampler's
        # pick at t when that pick is consistent with the text (else None).
        self.realign_fn = realign
        self.realigned = False  # set when self.output changed at next_t: the pass restarts there
        self.num_realigns = 0
        self.next_t = 0
        self.suspect = 0
        self.log_likelihood = 0.0
        self.min_margin: float | None = None
        self.first_bad: int | None = None
        self.reason: str | None = None
        self.details: list[PositionDetail] | None = [] if details else None

    @property
    def stop_known(self) -> bool:
        """The output ends where the sampler stopped by itself (EOS, stop string,
        max_tokens, context): the row after it decides nothing."""
        n = len(self.output)
        ended_by_eos = bool(n) and not self.params.ignore_eos and self.output[-1] in self.eos
        return ended_by_eos or self.ended_by_stop or n >= self.params.max_tokens or n >= self.context_left

    @property
    def rows_needed(self) -> int:
        """Rows the pass must score: one per output token, plus the stop row."""
        return len(self.output) + 1

    @property
    def failed(self) -> bool:
        return self.reason is not None

    @property
    def done(self) -> bool:
        return self.failed or self.next_t >= self.rows_needed

    # ------------------------------------------------------------------ feeding
    def observe(self, first_t: int, logits: torch.Tensor) -> None:
        """Rows `first_t ..` of the pass (fp32 logits [m, V], any device)."""
        rows = logits.detach().to("cpu", torch.float32)
        m = rows.shape[0]
        skip = max(0, self.next_t - first_t)
        for c0 in range(skip, m, _ROWS_PER_CHUNK):
            if self.failed:
                return
            chunk = rows[c0 : c0 + _ROWS_PER_CHUNK]
            ts = list(range(first_t + c0, first_t + c0 + chunk.shape[0]))
            fast = self._scan(chunk, ts)
            for i, t in enumerate(ts):
                self._row(t, chunk[i], *fast[i])
                if self.realigned:  # the rest of these rows scored the old tokens
                    return
                self.next_t += 1
                if self.failed:
                    return

    def _scan(self, chunk: torch.Tensor, ts: list[int]) -> list[tuple[_Judgement | None, float]]:
        """Vectorised first look at a chunk of rows: each output row's judgement
        (without the cut-off slack retries) and the revealed token's T = 1 log-prob."""
        n = len(self.output)
        toks = torch.tensor([self.output[t] if t < n else 0 for t in ts], dtype=torch.long)[:, None]
        logp = torch.log_softmax(chunk.to(torch.float64), dim=-1).gather(1, toks)[:, 0].tolist()
        p = self.params
        out: list[tuple[_Judgement | None, float]] = []
        if p.temperature <= 0:
            top2 = torch.topk(chunk, 2, dim=-1)
            picked = torch.argmax(chunk, dim=-1).tolist()
            gap = (top2.values[:, 0] - top2.values[:, 1]).tolist()
            behind = (chunk.gather(1, torch.tensor(picked)[:, None]) - chunk.gather(1, toks))[:, 0].tolist()
            for i, t in enumerate(ts):
                tok = int(toks[i, 0])
                if t >= n:
                    out.append((None, 0.0))
                    continue
                ok = tok == picked[i]
                status = "ok" if ok else ("suspect" if behind[i] <= self.tol.eps_logit else "bad")
                out.append(
                    (_Judgement(status, picked[i], gap[i], 0.0, 0.0, 0.0 if ok else behind[i]), logp[i])
                )
            return out
        probs = adjusted_probs(chunk, p.temperature, p.top_p, p.top_k)
        cdf = probs.cumsum(dim=-1)
        total = cdf[:, -1]
        u = torch.tensor([uniform(self.seed, t) for t in ts], dtype=torch.float64)
        pick = torch.searchsorted(cdf, (u * total)[:, None], right=True)
        ids = torch.arange(probs.shape[1])
        last_kept = torch.where(probs > 0, ids, -1).amax(dim=-1, keepdim=True)
        pick = torch.minimum(pick, last_kept)
        p_hi = cdf.gather(1, pick)[:, 0] / total
        p_lo = p_hi - probs.gather(1, pick)[:, 0] / total
        t_hi = cdf.gather(1, toks)[:, 0] / total
        t_p = probs.gather(1, toks)[:, 0] / total
        rows = zip(
            pick[:, 0].tolist(),
            p_lo.tolist(),
            p_hi.tolist(),
            t_hi.tolist(),
            t_p.tolist(),
            u.tolist(),
            strict=False,
        )
        for i, (pk, plo, phi, thi, tp, ui) in enumerate(rows):
            t = ts[i]
            if t >= n:
                out.append((None, 0.0))
                continue
            tok = int(toks[i, 0])
            margin = min(ui - plo, phi - ui)
            lo, hi = (thi - tp, thi) if tp > 0 else (0.0, 0.0)
            dist = 0.0
            if tok == pk:
                status = "ok"
            else:
                dist = math.inf if tp <= 0 else (lo - ui if ui < lo else ui - hi)
                status = "suspect" if dist <= self.tol.eps_cdf else "bad"
            out.append((_Judgement(status, pk, margin, lo, hi, dist), logp[i]))
        return out

    def _row(self, t: int, logits: torch.Tensor, fast: _Judgement | None, logp: float) -> None:
        n = len(self.output)
        if t < n and t >= self.params.max_tokens:  # text mode: the sampler's path ran past max_tokens
            self._fail("too_long", t)
            return
        if t < n:
            tok = self.output[t]
            j = fast
            assert j is not None
            if j.status != "ok" and self.realign_fn is not None and self._realign(t, j.picked):
                return
            if j.status == "bad":  # maybe a top-p / top-k cut-off moved by rounding
                j = self._judge(t, logits, tok)
            self.log_likelihood += logp
            if self.details is not None:
                self.details.append(
                    PositionDetail(t, tok, j.picked, j.margin, j.lo, j.hi, j.status == "suspect", j.dist)
                )
            if j.status == "ok":
                self.min_margin = j.margin if self.min_margin is None else min(self.min_margin, j.margin)
            elif j.status == "suspect":
                self._add_suspect(t)
            else:
                self._fail("token_mismatch", t)
            return
        if self.stop_known:
            return
        # The row after the output: the sampler must stop here.
        candidates = [] if self.params.ignore_eos else sorted(self.eos)
        verdicts = [self._judge(t, logits, e).status for e in candidates]
        if "ok" in verdicts:
            return
        picked = self._judge(t, logits, -1).picked
        if self.would_stop is not None and self.would_stop(self.output + [picked]):
            return
        if "suspect" in verdicts:
            self._add_suspect(t)
            return
        self._fail("wrong_stop", t)

    def _realign(self, t: int, picked: int) -> bool:
        """Text mode: follow the sampler's pick at t when the text allows it."""
        assert self.realign_fn is not None
        new = self.realign_fn(self.output, t, picked)
        if new is None:
            return False
        self.num_realigns += 1
        if self.num_realigns > MAX_REALIGNS:
            self._fail("untokenizable", t)
            return False
        if len(new) > self.context_left:  # cannot be scored; the sampler's path may be shorter
            self._fail("too_long", t)
            return False
        self.output = new
        self.realigned = True
        return True

    def _add_suspect(self, t: int) -> None:
        self.suspect += 1
        if self.suspect > self.tol.budget(len(self.output)):
            self._fail("too_many_suspect", t)

    def _fail(self, reason: str, t: int) -> None:
        if self.reason is None:
            self.reason = reason
            self.first_bad = t

    # ------------------------------------------------------------------ one position
    def _judge(self, t: int, logits: torch.Tensor, tok: int) -> _Judgement:
        """Is `tok` what the sampler picks at t (ok), within noise (suspect), or not (bad)?
        tok = -1 only asks for the pick. One row, every retry: the slow path."""
        p = self.params
        if p.temperature <= 0:
            top2 = torch.topk(logits, 2)
            picked = int(torch.argmax(logits))
            gap = float(top2.values[0] - top2.values[1])
            if tok == picked or tok < 0:
                return _Judgement("ok", picked, gap, 0.0, 0.0)
            behind = float(logits[picked] - logits[tok])
            status = "suspect" if behind <= self.tol.eps_logit else "bad"
            return _Judgement(status, picked, gap, 0.0, 0.0, behind)
        u = uniform(self.seed, t)
        probs = adjusted_probs(logits[None, :], p.temperature, p.top_p, p.top_k)[0]
        picked, lo, hi, margin, dist = _locate(probs, u, tok)
        if tok == picked or tok < 0:
            return _Judgement("ok", picked, margin, lo, hi)
        if dist <= self.tol.eps_cdf:
            return _Judgement("suspect", picked, margin, lo, hi, dist)
        # The producer's rounding may have put a top-p / top-k cut-off elsewhere.
        filtering = p.top_p < 1.0 or 0 < p.top_k < logits.shape[0]
        if filtering:
            e_p, e_l = self.tol.eps_cdf, self.tol.eps_logit
            for sp, sl in ((e_p, e_l), (-e_p, -e_l)):
                alt = adjusted_probs(
                    logits[None, :], p.temperature, p.top_p, p.top_k, slack_p=sp, slack_logit=sl
                )[0]
                alt_dist = _locate(alt, u, tok)[4]
                if alt_dist <= self.tol.eps_cdf:
                    return _Judgement("suspect", picked, margin, lo, hi, alt_dist)
        return _Judgement("bad", picked, margin, lo, hi, dist)

    # ------------------------------------------------------------------ verdict
    def result(self, **extra) -> RecheckResult:
        reason = self.reason
        if reason is None and self.next_t < self.rows_needed:
            reason = "incomplete"
        return RecheckResult(
            request_id=self.request_id,
            passed=reason is None,
            reason=reason,
            positions=min(self.next_t, len(self.output)),
            suspect_positions=self.suspect,
            first_bad_position=self.first_bad,
            log_likelihood=self.log_likelihood,
            min_margin=self.min_margin,
            details=self.details,
            **extra,
        )


def _locate(probs: torch.Tensor, u: float, tok: int) -> tuple[int, float, float, float, float]:
    """(picked, lo, hi, margin, dist) for one row of adjusted probs (float64 [V]).

    lo/hi: tok's CDF interval normalised to total 1 (0, 0 when tok is not kept);
    margin: distance of u to the nearest edge of the picked token's interval;
    dist: distance of u to tok's interval (0 inside, inf when tok is not kept).
    """
    cdf = probs.cumsum(0)
    total = float(cdf[-1])
    x = u * total
    picked = int(torch.searchsorted(cdf, torch.tensor([x], dtype=torch.float64), right=True)[0])
    if picked >= probs.shape[0] or float(probs[picked]) == 0.0:
        picked = int(torch.nonzero(probs > 0)[-1, 0])
    p_hi = float(cdf[picked]) / total
    p_lo = p_hi - float(probs[picked]) / total
    margin = min(u - p_lo, p_hi - u)
    if tok < 0 or float(probs[tok]) == 0.0:
        return picked, 0.0, 0.0, margin, math.inf
    hi = float(cdf[tok]) / total
    lo = hi - float(probs[tok]) / total
    dist = 0.0 if lo <= u < hi else (lo - u if u < lo else u - hi)
    return picked, lo, hi, margin, dist


def immediate_result(
    request_id: str, reason: str, *, first_bad: int | None = None, error: str | None = None
) -> RecheckResult:
    """A verdict reached before any model pass (structure), or "unavailable"."""
    return RecheckResult(
        request_id=request_id,
        passed=False,
        reason=reason,
        positions=0,
        suspect_positions=0,
        first_bad_position=first_bad,
        log_likelihood=0.0,
        error=error,
    )


def structural_check(
    output: Sequence[int],
    params: SamplingParams,
    *,
    eos_token_ids: set[int],
    stop_index: int | None,
    num_prompt: int,
    max_model_len: int,
) -> tuple[str, int] | None:
    """Reasons an output fails without running the model: (reason, position) or None.

    stop_index: the first output index whose token completes a stop string (None when
    none does). An output must end at the first EOS or stop string, and be no longer
    than max_tokens or the model's context.
    """
    n = len(output)
    if n > params.max_tokens:
        return "too_long", params.max_tokens
    if num_prompt + n > max_model_len:
        return "too_long", max_model_len - num_prompt
    if not params.ignore_eos:
        for i, tok in enumerate(output):
            if tok in eos_token_ids and i < n - 1:
                return "wrong_stop", i + 1
    if stop_index is not None and stop_index < n - 1:
        return "wrong_stop", stop_index + 1
    return None
