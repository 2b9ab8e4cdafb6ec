"""The recorded path's table: every candidate pooled in one vectorised call, checked per row."""

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.energy.logit import ENERGY_COLUMNS, candidate_energy_row, per_token_from_record
from impetus.energy.recorded import recorded_energies, token_span


def _graded(lengths: list[int], seed: int = 0) -> pd.DataFrame:
    """A graded table with recorded statistics: ``lengths[i]`` one-character tokens per completion,
    the answer the last two characters (none for an empty completion)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, t in enumerate(lengths):
        rows.append({"problem_id": f"p{i // 2}", "sample_idx": i % 2, "n_tokens": t, "completion": "x" * t,
                     "rec_lse": rng.normal(5, 2, t + 1).astype(np.float32),
                     "rec_tok_logit": rng.normal(3, 2, t).astype(np.float32),
                     "rec_deepconf": rng.uniform(0, 4, t).astype(np.float32),
                     "rec_char_ends": np.arange(1, t + 1, dtype=np.int32),
                     "answer_start": max(0, t - 2) if t else None, "answer_end": t if t else None,
                     "hidden_mean": rng.normal(size=4).astype(np.float32),
                     "hidden_answer": rng.normal(size=4).astype(np.float32)})
    return pd.DataFrame(rows)


def test_recorded_energies_equal_each_candidate_pooled_alone():
    graded = _graded([3, 0, 7, 1, 30, 12])
    table, hidden = recorded_energies(graded)
    assert table["empty_completion"].tolist() == [False, True, False, False, False, False]
    for i, r in enumerate(graded.itertuples()):
        per = per_token_from_record(torch.tensor(r.rec_lse), torch.tensor(r.rec_tok_logit), torch.tensor(r.rec_deepconf))
        span = token_span(list(r.rec_char_ends), None if r.n_tokens == 0 else (r.answer_start, r.answer_end))
        alone = candidate_energy_row(per, span, r.n_tokens)
        for c in ENERGY_COLUMNS:
            assert table.loc[i, c] == pytest.approx(alone[c], rel=1e-6), (i, c)
        assert bool(table.loc[i, "answer_span_found"]) == alone["answer_span_found"]
    assert hidden["hidden_mean"].shape == (6, 4)


def test_recorded_energies_name_a_candidate_whose_arrays_do_not_match_its_tokens():
    graded = _graded([3, 4])
    graded.at[1, "rec_lse"] = graded.at[1, "rec_lse"][:-1]
    with pytest.raises(ValueError, match=r"problem p0, sample 1\): 4 tokens but 4 lse"):
        recorded_energies(graded)
