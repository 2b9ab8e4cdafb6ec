"""Logit energies and pooled hidden states from what the sampler recorded while decoding.

No LM forward: the per-token statistics (``impetus.lm.recording``) already hold the raw-logit
quantities a teacher-forced pass would recompute, so this is pooling only. The teacher-forced path
(:func:`impetus.lm.scoring.score_table`) stays for completions the sampler did not produce and as
the reference these values are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from impetus.energy.logit import (ENERGY_COLUMNS, FLAG_COLUMNS, candidate_energy_columns, candidate_energy_row,
                                  per_token_from_record)

# The one record schema: what a recording sampler keeps per candidate (``impetus.lm.recording``)
# and the candidate-table column each value is stored under. Defined here, the lowest layer that
# reads it, so the sampler (lm) imports it from energy and never the other way round.
#: Per-token arrays: ``lse`` has T + 1 entries, the others T (float32); ``char_ends`` (int32) is
#: each token's end offset in the completion text.
TOKEN_ARRAYS = ("lse", "tok_logit", "deepconf", "char_ends")
#: Pooled last-layer states (float32, hidden size).
POOLED_STATES = ("hidden_mean", "hidden_answer")
#: Candidate column -> record key (per-token arrays get a ``rec_`` prefix, pooled states keep their name).
RECORD_KEYS: dict[str, str] = {**{f"rec_{k}": k for k in TOKEN_ARRAYS}, **{k: k for k in POOLED_STATES}}
#: Candidate columns a recording sampler writes, in order.
RECORD_COLUMNS: list[str] = list(RECORD_KEYS)
#: Pooled states of further layers (``model.hidden_layers``) are stored as ``hidden_l<k>``.
LAYER_PREFIX = "hidden_l"


def layer_key(k: int) -> str:
    """Record key and candidate column of layer ``k``'s pooled (mean) states."""
    return f"{LAYER_PREFIX}{int(k)}"


def layer_columns(columns: Any) -> list[str]:
    """The ``hidden_l<k>`` columns among ``columns``, by layer."""
    found = [c for c in columns if c.startswith(LAYER_PREFIX) and c[len(LAYER_PREFIX):].isdigit()]
    return sorted(found, key=lambda c: int(c[len(LAYER_PREFIX):]))


#: ``finish_reason`` of a candidate that is a multiple-choice problem's given choice, teacher-forced
#: after the shared context (``sampling.candidates: choices``), not a sampled completion.
CHOICE = "choice"


def is_choices(candidates: pd.DataFrame) -> bool:
    """Whether a candidates (or graded) table holds scored choices rather than sampled completions."""
    return len(candidates) > 0 and "finish_reason" in candidates.columns and bool(
        (candidates["finish_reason"] == CHOICE).all())


def loglik_energies(graded: pd.DataFrame) -> pd.DataFrame:
    """lm-evaluation-harness's two multiple-choice scores as energies (lower = better):
    ``neg_loglik``, minus the summed log-probability of the choice's tokens (its ``acc`` ranks by the
    sum), and ``neg_loglik_per_char``, that divided by the choice's length in characters (its
    ``acc_norm``; the length of the choice text, the graded answer span, without the delimiter)."""
    total = np.array([float(np.sum(np.asarray(t, np.float64) - np.asarray(l, np.float64)[:-1]))
                      for t, l in zip(graded["rec_tok_logit"], graded["rec_lse"])])
    chars = (graded["answer_end"] - graded["answer_start"]).astype("float64").to_numpy()
    return pd.DataFrame({"neg_loglik": -total, "neg_loglik_per_char": -total / np.maximum(chars, 1.0)},
                        index=graded.index)


def has_record(candidates: pd.DataFrame) -> bool:
    """Whether every candidate carries recorded statistics."""
    return all(c in candidates.columns for c in RECORD_COLUMNS) and not candidates["rec_lse"].isna().any()


def token_span(ends: list[int], char_span: tuple[int, int] | None) -> tuple[int, int] | None:
    """Token span ``[start, end)`` of the tokens overlapping characters ``[a, b)``.

    ``ends[k]`` is token k's end offset in the text; a token overlaps iff it starts before ``b``
    and ends after ``a`` (zero-width tokens never do), the rule teacher-forced scoring applies to
    tokenizer offsets.
    """
    if char_span is None or char_span[1] <= char_span[0]:
        return None
    a, b = int(char_span[0]), int(char_span[1])
    starts = [0, *ends[:-1]]
    hits = [k for k, (s, e) in enumerate(zip(starts, ends)) if e > s and s < b and e > a]
    return (hits[0], hits[-1] + 1) if hits else None


def _char_span(start: Any, end: Any) -> tuple[int, int] | None:
    return None if pd.isna(start) or pd.isna(end) else (int(start), int(end))


def energy_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of :func:`impetus.energy.logit.candidate_energy_row` as a table: energies float64, flags bool."""
    table = pd.DataFrame(rows, columns=list(ENERGY_COLUMNS) + list(FLAG_COLUMNS))
    return table.astype({c: np.float64 for c in ENERGY_COLUMNS} | {c: bool for c in FLAG_COLUMNS})


def recorded_row(lse: Any, tok_logit: Any, deepconf: Any, ends: list[int], char_span: tuple[int, int] | None,
                 n_tokens: int) -> tuple[dict, tuple[int, int] | None]:
    """One candidate's energy row from its recorded arrays (``n_tokens`` kept tokens), and its
    answer's token span (characters ``char_span`` mapped through the tokens' end offsets)."""
    per_tok = per_token_from_record(torch.as_tensor(np.asarray(lse, np.float32)),
                                    torch.as_tensor(np.asarray(tok_logit, np.float32)),
                                    torch.as_tensor(np.asarray(deepconf, np.float32)))
    span = token_span(list(ends), char_span)
    return candidate_energy_row(per_tok, span, int(n_tokens)), span


def _padded(arrays: Any, extra: int = 0) -> torch.Tensor:
    """Ragged 1-D arrays as one right-padded (zeros) float32 ``[N, max length]`` tensor; ``extra``:
    how many more entries than its token count each array has (``lse``: 1)."""
    lengths = [len(a) for a in arrays]
    out = np.zeros((len(lengths), max([extra, *lengths])), np.float32)
    for i, a in enumerate(arrays):
        out[i, : lengths[i]] = a
    return torch.from_numpy(out)


def _check_lengths(graded: pd.DataFrame) -> None:
    """Every record holds ``n_tokens`` values per token array and one more ``lse`` (else a padded
    batch would silently pool another row's layout); the error names the first bad candidate."""
    for row in graded[["problem_id", "sample_idx", "n_tokens", "rec_lse", "rec_tok_logit", "rec_deepconf"]].itertuples():
        t = int(row.n_tokens)
        if (len(row.rec_lse), len(row.rec_tok_logit), len(row.rec_deepconf)) != (t + 1, t, t):
            raise ValueError(f"candidate (problem {row.problem_id}, sample {row.sample_idx}): {t} tokens but "
                             f"{len(row.rec_lse)} lse, {len(row.rec_tok_logit)} tok_logit and "
                             f"{len(row.rec_deepconf)} deepconf values (expected T + 1, T, T)")


def recorded_energies(graded: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Energies table (problem_id, sample_idx, logit energies, flags) and pooled hidden states of a
    graded candidates table with recorded statistics; the answer span is the graded one. All
    candidates are pooled in one vectorised call (:func:`candidate_energy_columns`)."""
    if not has_record(graded):
        raise ValueError("candidates carry no recorded statistics (sampled without recording?); "
                         "use the teacher-forced path (impetus.lm.scoring.score_table)")
    _check_lengths(graded)
    per_tok = per_token_from_record(_padded(graded["rec_lse"], extra=1), _padded(graded["rec_tok_logit"]),
                                    _padded(graded["rec_deepconf"]))
    spans = [token_span(list(ends), _char_span(a, b))
             for ends, a, b in zip(graded["rec_char_ends"], graded["answer_start"], graded["answer_end"])]
    table = pd.DataFrame(candidate_energy_columns(per_tok, spans, graded["n_tokens"].astype(int).tolist()))
    table = table.astype({c: np.float64 for c in ENERGY_COLUMNS} | {c: bool for c in FLAG_COLUMNS})
    if is_choices(graded):  # the field's baselines, from the same recorded values
        table = pd.concat([table, loglik_energies(graded).reset_index(drop=True)], axis=1)
    table.insert(0, "problem_id", graded["problem_id"].to_numpy())
    table.insert(1, "sample_idx", graded["sample_idx"].to_numpy())
    hidden = {"problem_id": graded["problem_id"].to_numpy(), "sample_idx": graded["sample_idx"].to_numpy()}
    for col in [*POOLED_STATES, *layer_columns(graded.columns)]:
        hidden[col] = np.stack([np.asarray(v, np.float32) for v in graded[col]])
    return table, hidden
