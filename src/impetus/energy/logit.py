"""Training-free, logit-based energies for one sampled completion (pure tensor functions).

Indexing convention used throughout this module
-----------------------------------------------
For a completion of ``T`` tokens, ``logits`` has ``T + 1`` rows: row ``i`` is the next-token
distribution that *predicted* ``tokens[i]`` (it was computed from the prompt plus
``tokens[:i]``), and row ``T`` is the distribution *after* the last token. This extra row is
what the Spilled Energy measure needs (it compares two consecutive steps).

Per-token quantities (:func:`logit_energies`)
---------------------------------------------
* ``spilled``  -- Spilled Energy, Minut, Dewidar & Masi, "Spilled Energy in Large Language
  Models", arXiv:2602.18671 (ICLR 2026). With token energy ``E_i = -f_i[x_i]`` and marginal
  energy ``E'_i = -logsumexp(f_{i+1})`` the paper defines ``ΔE_i = E_i - E'_i``, i.e.
  ``dE[i] = logsumexp(logits[i+1]) - logits[i, tokens[i]]``. The chain rule says both energies
  describe the same joint ``p(x_{<=i})`` up to the same normaliser, so a large spill flags a
  likely error (hallucination). This matches the authors' reference code
  (``spilled_energy.energy.spilled_energy``: ``delta = -E_margin + E``).
* ``marginal`` -- the paper's marginalised energy ``Em[i] = -logsumexp(logits[i+1])``,
  measurable at a single step; higher = less plausible.
* ``logprob``  -- ``log_softmax(logits[i])[tokens[i]]``, the ordinary token log-likelihood.
* ``deepconf`` -- DeepConf token confidence, Fu et al., "Deep Think with Confidence",
  arXiv:2508.15260: ``C_i = -(1/k) * sum_{j<=k} log P_i(j)`` over the ``k = 20`` most
  likely tokens of step ``i``. Always ``>= 0``; higher = more peaked = more confident.

Per-candidate columns (:func:`candidate_energy_row`, from the per-token quantities of a
teacher-forced pass, :func:`logit_energies`, or of the sampler's recording,
:func:`per_token_from_record`) are oriented so that **lower = better** for every float column
(the ``energies`` data contract).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

#: DeepConf uses the top-20 log-probabilities for token confidence (arXiv:2508.15260).
DEEPCONF_TOP_K = 20
#: Sliding window for DeepConf group confidence. The paper uses 2048 tokens for long reasoning
#: traces; our completions are a few hundred tokens, so a much shorter window is used.
DEFAULT_GROUP_WINDOW = 16
#: Number of final tokens for DeepConf tail confidence (paper: 2048; scaled down as above).
DEFAULT_TAIL = 32
#: Finite stand-in for energies that cannot be computed (empty completion). Large so that such
#: candidates sort last under argmin, yet finite so that z-scoring/EBM training never sees NaN.
FILL_VALUE = 1.0e4

#: Energy columns produced by :func:`candidate_energy_row` (all floats, lower = better).
ENERGY_COLUMNS: tuple[str, ...] = (
    "spilled_max",
    "spilled_mean",
    "spilled_min",
    "marginal_max",
    "marginal_mean",
    "marginal_min",
    "spilled_max_all",
    "spilled_mean_all",
    "neg_logprob_mean",
    "neg_logprob_min",
    "neg_logprob_answer",
    "neg_deepconf_mean",
    "neg_deepconf_lowest_group",
    "neg_deepconf_tail",
)
#: Boolean flag columns produced alongside (not energies; selection code should skip them).
FLAG_COLUMNS: tuple[str, ...] = ("answer_span_found", "empty_completion")


def logit_energies(logits: Tensor, tokens: Tensor, top_k: int = DEEPCONF_TOP_K) -> dict[str, Tensor]:
    """Per-token spilled/marginal energy, log-prob and DeepConf confidence.

    Args:
        logits: ``[..., T + 1, V]`` raw (un-tempered) logits; row ``i`` predicted ``tokens[i]``,
            row ``T`` is the distribution after the last token.
        tokens: ``[..., T]`` integer token ids of the completion.
        top_k: tokens averaged in the DeepConf confidence (paper: 20); clipped to ``V``.

    Returns:
        ``{"spilled", "marginal", "logprob", "deepconf"}``, each float32 ``[..., T]``.

    Leading batch dimensions broadcast, so a right-padded batch ``[B, T_max + 1, V]`` works, but
    positions beyond each sequence's own length are then meaningless and must be masked by the
    caller. The simplest correct use is one call per sequence with its own ``T + 1`` rows
    (what :func:`impetus.lm.scoring.score_candidates` does).

    Formulas: Spilled Energy and marginal energy from arXiv:2602.18671; DeepConf token
    confidence from arXiv:2508.15260 (see module docstring).
    """
    if logits.shape[-2] != tokens.shape[-1] + 1:
        raise ValueError(f"logits must have T+1 rows for T tokens; got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    # float32 because bf16 logsumexp over ~50k entries loses ~2 decimal digits.
    logits = logits.float()
    tokens = tokens.long()
    # logsumexp is computed with the max-shift trick inside torch -> stable for large logits.
    lse = torch.logsumexp(logits, dim=-1)  # [..., T+1]
    pred = logits[..., :-1, :]  # rows that predicted each token
    tok_logit = torch.gather(pred, -1, tokens.unsqueeze(-1)).squeeze(-1)  # f_i[x_i]
    lse_next = lse[..., 1:]  # normaliser of the step *after* token i
    spilled = lse_next - tok_logit
    marginal = -lse_next
    logprob = tok_logit - lse[..., :-1]
    k = min(top_k, logits.shape[-1])
    if pred.shape[-2] == 0:
        deepconf = pred.new_zeros(pred.shape[:-1])
    else:
        # top-k of log_softmax == top-k of logits minus the same lse, so no full softmax is needed.
        top = torch.topk(pred, k, dim=-1).values - lse[..., :-1].unsqueeze(-1)
        deepconf = -top.mean(dim=-1)
    return {"spilled": spilled, "marginal": marginal, "logprob": logprob, "deepconf": deepconf}


def spilled_energy(logits: Tensor, tokens: Tensor) -> Tensor:
    """Spilled Energy per token, ``logsumexp(logits[i+1]) - logits[i, tokens[i]]`` (arXiv:2602.18671)."""
    return logit_energies(logits, tokens)["spilled"]


def marginal_energy(logits: Tensor, tokens: Tensor) -> Tensor:
    """Marginalised energy per token, ``-logsumexp(logits[i+1])`` (arXiv:2602.18671)."""
    return logit_energies(logits, tokens)["marginal"]


def pool_span(values: Tensor, start: int, end: int) -> dict[str, float]:
    """Min, max and mean of ``values[start:end]``; NaN for an empty span.

    The Spilled Energy paper pools its per-token scores over the exact-answer tokens with
    mean/max/min (arXiv:2602.18671, Sec. 4 and the authors' ``compute_token_metrics``).
    """
    span = values[start:end].float()
    if span.numel() == 0:
        return {"min": math.nan, "max": math.nan, "mean": math.nan}
    return {"min": float(span.min()), "max": float(span.max()), "mean": float(span.mean())}


def group_confidences(conf: Tensor, window: int = DEFAULT_GROUP_WINDOW) -> Tensor:
    """DeepConf group confidences: means of ``conf`` over every sliding window (arXiv:2508.15260).

    The window is shortened to the sequence length when the sequence is shorter, so a short
    completion yields a single group (its mean). Returns an empty tensor for empty input.
    """
    conf = conf.float().reshape(-1)
    n = conf.numel()
    if n == 0:
        return conf
    w = max(1, min(int(window), n))
    return conf.unfold(0, w, 1).mean(dim=-1)


def lowest_group_confidence(conf: Tensor, window: int = DEFAULT_GROUP_WINDOW) -> float:
    """DeepConf lowest group confidence: ``min`` over sliding-window means (arXiv:2508.15260).

    A single confused stretch in a long trace is a strong failure signal that a global mean
    would dilute. NaN for an empty sequence.
    """
    groups = group_confidences(conf, window)
    return float(groups.min()) if groups.numel() else math.nan


def bottom_percent_group_confidence(conf: Tensor, window: int = DEFAULT_GROUP_WINDOW, percent: float = 10.0) -> float:
    """DeepConf bottom-``percent`` group confidence: mean of the lowest ``percent``% of group confidences (arXiv:2508.15260)."""
    groups = group_confidences(conf, window)
    if groups.numel() == 0:
        return math.nan
    n = max(1, int(math.ceil(groups.numel() * percent / 100.0)))
    return float(torch.sort(groups).values[:n].mean())


def tail_confidence(conf: Tensor, tail: int = DEFAULT_TAIL) -> float:
    """DeepConf tail confidence: mean over the last ``tail`` tokens (arXiv:2508.15260).

    The end of a reasoning trace carries the final answer, so its confidence is most telling.
    NaN for an empty sequence.
    """
    conf = conf.float().reshape(-1)
    if conf.numel() == 0:
        return math.nan
    return float(conf[-max(1, int(tail)) :].mean())


def candidate_energy_row(
    per_token: dict[str, Tensor],
    answer_span: tuple[int, int] | None,
    n_completion_tokens: int,
    window: int = DEFAULT_GROUP_WINDOW,
    tail: int = DEFAULT_TAIL,
) -> dict[str, float | bool]:
    """Pool per-token quantities into one row of candidate energies (**lower = better** everywhere).

    One completion's row of :func:`candidate_energy_columns` (see there for the columns, signs and
    fallbacks). ``per_token``: output of :func:`logit_energies` for one completion (1-D tensors of
    length ``>= T``); ``answer_span``: completion *token* indices ``[start, end)`` of the extracted
    answer, or ``None``; ``n_completion_tokens``: ``T``.
    """
    cols = candidate_energy_columns({k: v.reshape(1, -1) for k, v in per_token.items()}, [answer_span],
                                    [n_completion_tokens], window, tail)
    return {k: bool(v[0]) if k in FLAG_COLUMNS else float(v[0]) for k, v in cols.items()}


def _pool(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: min, max and mean of ``values`` where ``mask``; NaN for a row with an empty mask."""
    inf = torch.tensor(math.inf, dtype=values.dtype)
    empty = ~mask.any(dim=-1)
    low = torch.where(mask, values, inf).amin(dim=-1).masked_fill(empty, math.nan)
    high = torch.where(mask, values, -inf).amax(dim=-1).masked_fill(empty, math.nan)
    mean = torch.where(mask, values, 0.0).sum(dim=-1) / mask.sum(dim=-1)  # 0/0 = NaN when empty
    return low, high, mean


def _deepconf_groups(conf: Tensor, n_tok: Tensor, window: int, tail: int) -> tuple[Tensor, Tensor]:
    """Per row: the lowest sliding-window mean confidence and the mean of the last ``tail`` tokens
    (:func:`lowest_group_confidence`, :func:`tail_confidence`), from one cumulative sum; the window
    and the tail are shortened to a shorter row's length, and an empty row gives NaN."""
    width = conf.shape[-1]
    cum = torch.cat([conf.new_zeros(conf.shape[0], 1), conf.cumsum(dim=-1)], dim=-1)  # [N, W + 1]
    w = n_tok.clamp(max=max(1, int(window))).clamp(min=1)[:, None]
    start = torch.arange(width)[None]
    means = (cum.gather(1, (start + w).clamp(max=width)) - cum[:, :width]) / w
    valid = start <= n_tok[:, None] - w
    lowest = torch.where(valid, means, math.inf).amin(dim=-1).masked_fill(~valid.any(dim=-1), math.nan)
    t = n_tok.clamp(max=max(1, int(tail)))
    last = (cum.gather(1, n_tok[:, None]) - cum.gather(1, (n_tok - t)[:, None]))[:, 0] / t
    return lowest, last.masked_fill(n_tok == 0, math.nan)


def candidate_energy_columns(
    per_token: dict[str, Tensor],
    answer_spans: Sequence[tuple[int, int] | None],
    n_completion_tokens: Sequence[int],
    window: int = DEFAULT_GROUP_WINDOW,
    tail: int = DEFAULT_TAIL,
) -> dict[str, np.ndarray]:
    """Candidate energies of many completions at once, one array per column (**lower = better**).

    Vectorised over candidates: pooling 800 recorded candidates one by one cost ~0.1 s of small
    torch ops, 0.4% of the default run's sampling time, most of it per-op overhead.

    Args:
        per_token: :func:`logit_energies` / :func:`per_token_from_record` quantities as right-padded
            ``[N, W]`` tensors; row ``i``'s entries beyond ``n_completion_tokens[i]`` are ignored.
        answer_spans: per completion, the *token* indices ``[start, end)`` of the extracted answer,
            or ``None`` when no answer was located (then the whole completion is pooled, as is a span
            outside ``[0, T)``).
        n_completion_tokens: ``T`` per completion (``<= W``).
        window, tail: DeepConf group window and tail length, shortened to ``T`` for shorter rows.

    Columns and signs (pooled in float64):
        * ``spilled_{max,mean,min}``: Spilled Energy pooled over the answer span. Used as is:
          a larger spill means a likelier error (arXiv:2602.18671; the authors pool over the exact
          answer tokens with mean/max/min, their ``compute_token_metrics``).
        * ``marginal_{max,mean,min}``: marginal energy ``-logsumexp`` over the answer span, as is
          (higher energy = less plausible, arXiv:2602.18671).
        * ``spilled_{max,mean}_all``: Spilled Energy pooled over the whole completion, as is.
        * ``neg_logprob_mean``: ``-mean log p(token)`` over the whole completion (per-token NLL).
        * ``neg_logprob_min``: ``-min log p(token)`` over the whole completion: the surprisal of
          the least likely token, where a single slip (one wrong digit in a sum) shows up.
        * ``neg_logprob_answer``: ``-mean log p(token)`` over the answer span.
        * ``neg_deepconf_mean``: ``-mean C_i`` (DeepConf confidence is higher = better, so negated).
        * ``neg_deepconf_lowest_group``: ``-min`` sliding-window mean confidence, negated.
        * ``neg_deepconf_tail``: ``-mean`` confidence of the last ``tail`` tokens, negated.
        * ``answer_span_found`` (bool flag): the span was given and non-empty within ``[0, T)``.
        * ``empty_completion`` (bool flag): ``T == 0``; every energy is then :data:`FILL_VALUE`
          (a large finite number, so the candidate ranks last and no NaN leaks downstream).
    """
    n_tok = torch.as_tensor(list(n_completion_tokens), dtype=torch.long)
    width = per_token["spilled"].shape[-1]
    if len(n_tok) and int(n_tok.max()) > width:
        raise ValueError(f"a completion of {int(n_tok.max())} tokens has only {width} per-token values")
    pad = max(1, width)  # a zero-width batch (all completions empty) still pools to NaN rows
    per = {k: torch.nn.functional.pad(v.double(), (0, pad - width)) for k, v in per_token.items()}
    a = torch.tensor([-1 if sp is None else max(0, int(sp[0])) for sp in answer_spans], dtype=torch.long)
    b = torch.minimum(torch.tensor([-1 if sp is None else int(sp[1]) for sp in answer_spans], dtype=torch.long), n_tok)
    found = (a >= 0) & (b > a)
    s, e = torch.where(found, a, 0), torch.where(found, b, n_tok)
    pos = torch.arange(pad)[None]
    span, whole = (pos >= s[:, None]) & (pos < e[:, None]), pos < n_tok[:, None]
    sp_min, sp_max, sp_mean = _pool(per["spilled"], span)
    mg_min, mg_max, mg_mean = _pool(per["marginal"], span)
    _, all_max, all_mean = _pool(per["spilled"], whole)
    lp_min, _, lp_mean = _pool(per["logprob"], whole)
    conf = torch.where(whole, per["deepconf"], 0.0)
    lowest, last = _deepconf_groups(conf, n_tok, window, tail)
    cols = {
        "spilled_max": sp_max, "spilled_mean": sp_mean, "spilled_min": sp_min,
        "marginal_max": mg_max, "marginal_mean": mg_mean, "marginal_min": mg_min,
        "spilled_max_all": all_max, "spilled_mean_all": all_mean,
        "neg_logprob_mean": -lp_mean, "neg_logprob_min": -lp_min,
        "neg_logprob_answer": -_pool(per["logprob"], span)[2],
        "neg_deepconf_mean": -_pool(conf, whole)[2],
        "neg_deepconf_lowest_group": -lowest, "neg_deepconf_tail": -last,
    }
    # Fill anything non-finite (empty completion, or inf logits) so downstream never sees NaN.
    out = {k: np.where(np.isfinite(v.numpy()), v.numpy(), FILL_VALUE) for k, v in cols.items()}
    return {**{k: out[k] for k in ENERGY_COLUMNS}, "answer_span_found": found.numpy(),
            "empty_completion": (n_tok == 0).numpy()}


def per_token_from_record(lse: Tensor, tok_logit: Tensor, deepconf: Tensor) -> dict[str, Tensor]:
    """The per-token quantities of :func:`logit_energies` from values recorded while decoding.

    ``lse`` (T + 1): logsumexp of each step's raw logits, the last one *after* the final token;
    ``tok_logit`` (T): the sampled tokens' raw logits; ``deepconf`` (T): DeepConf confidence.
    Same formulas: spilled ``lse[i+1] - f_i[x_i]`` and marginal ``-lse[i+1]`` (arXiv:2602.18671).
    Leading dimensions broadcast: right-padded ``[N, W + 1]`` and ``[N, W]`` rows give ``[N, W]``
    quantities whose entries beyond a row's own ``T`` are meaningless (masked by the pooling).
    """
    lse, tok_logit = lse.float(), tok_logit.float()
    if lse.shape[-1] != tok_logit.shape[-1] + 1:
        raise ValueError(f"lse needs T+1 entries for T tokens; got {tuple(lse.shape)} and {tuple(tok_logit.shape)}")
    return {
        "spilled": lse[..., 1:] - tok_logit,
        "marginal": -lse[..., 1:],
        "logprob": tok_logit - lse[..., :-1],
        "deepconf": deepconf.float(),
    }
