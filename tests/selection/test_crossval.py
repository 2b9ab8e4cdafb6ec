"""Cross-validated selection over train-side problems: every fold's learned energies are fit on the
other folds only (impetus.learned.crossfit), and no eval problem enters any fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import impetus.learned.crossfit as crossfit
from impetus.framework.config import ScorerParams
from impetus.learned.mining import LeakageError
from impetus.selection.crossval import assign_folds, choose_by_cv, shortlisted
from impetus.testing import tiny_tokenizer

N, H = 4, 8


def _split(prefix: str, n: int, rng: np.random.Generator):
    problems, graded, energies, hidden = [], [], [], []
    for p in range(n):
        pid = f"{prefix}{p:02d}"
        problems.append({"problem_id": pid, "question": f"What is {p} + 1?"})
        for s in range(N):
            right = s == p % N  # one right candidate per problem, at a varying position
            graded.append({"problem_id": pid, "sample_idx": s, "completion": f"It is {p + 1 if right else p}.",
                           "answer": str(p + 1 if right else p + s + 2), "correct": right})
            energies.append({"problem_id": pid, "sample_idx": s, "spilled_max": float(rng.normal(-1 if right else 1))})
            hidden.append(rng.normal(size=H) + (2.0 if right else 0.0))
    hid = {"problem_id": np.array([g["problem_id"] for g in graded]), "sample_idx": np.array([g["sample_idx"] for g in graded]),
           "hidden_mean": np.array(hidden, np.float32), "hidden_answer": np.array(hidden, np.float32)}
    return pd.DataFrame(problems), pd.DataFrame(graded), pd.DataFrame(energies), hid


def _config():
    fast = {"epochs": 2, "lr": 0.003, "weight_decay": 0.0, "batch_groups": 4, "patience": 2, "val_fraction": 0.2}
    return ScorerParams.model_validate({
        "seed": 0, "n_seeds": 1, "fold_members": True, "progress": False, "allow_pickle": False,
        "text_ebm": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 48, "dropout": 0.0, "score_dtype": "float32", "train": fast},
        "latent_ebm": {"hidden_source": "mean", "hidden": 16, "n_layers": 1, "dropout": 0.0, "train": fast},
        "hybrid": {"columns": None, "cross_fit_folds": 2, "l2_grid": [0.1]},
    }).to_core()


def test_each_fold_is_scored_by_learned_energies_fit_without_it(monkeypatch):
    rng = np.random.default_rng(0)
    (pt, gt, et, ht), (pd_, gd, ed, hd) = _split("tr", 12, rng), _split("dv", 6, rng)
    table, hidden = crossfit.train_side_table([(gt, et, ht), (gd, ed, hd)], held_out={"ev00"})
    fold_of = assign_folds(table["problem_id"], 3, seed=0, held_out={"ev00"})
    fitted_on: list[set] = []
    real_ebms, real_hybrid = crossfit._fold_ebms, crossfit.fit_hybrid
    monkeypatch.setattr(crossfit, "_fold_ebms", lambda groups, *a: fitted_on.append(set(groups["problem_id"])) or real_ebms(groups, *a))
    monkeypatch.setattr(crossfit, "fit_hybrid", lambda df, *a: fitted_on.append(set(df["problem_id"])) or real_hybrid(df, *a))
    oof, seconds = crossfit.out_of_fold_table(table, pd.concat([pt, pd_]), hidden, tiny_tokenizer(), _config(),
                                              fold_of, held_out={"ev00"})
    assert len(fitted_on) == 6  # 3 EBM fits then 3 hybrid fits
    for k in range(3):
        fold = set(fold_of.index[fold_of == k])
        for seen in (fitted_on[k], fitted_on[3 + k]):
            assert seen and not seen & fold and seen <= set(fold_of.index) - fold
    assert list(oof[["problem_id", "sample_idx"]].itertuples(index=False)) == \
        list(table.sort_values(["problem_id", "sample_idx"])[["problem_id", "sample_idx"]].itertuples(index=False))
    assert oof[["text_ebm", "latent_ebm", "hybrid"]].notna().all().all()
    assert set(seconds) == {"text_ebm", "latent_ebm", "hybrid"} and all(v >= 0 for v in seconds.values())


def test_an_eval_problem_in_train_side_data_raises():
    rng = np.random.default_rng(1)
    _, gt, et, ht = _split("tr", 4, rng)
    _, ge, ee, he = _split("ev", 2, rng)
    with pytest.raises(LeakageError, match="ev01"):
        crossfit.train_side_table([(gt, et, ht), (ge, ee, he)], held_out={"ev00", "ev01"})
    table, _ = crossfit.train_side_table([(gt, et, ht)], held_out={"ev00"})
    fold_of = assign_folds(table["problem_id"], 2, seed=0)
    with pytest.raises(LeakageError, match="tr00"):  # mining per fold checks it too
        crossfit.out_of_fold_table(table, None, None, None, _config(), fold_of, held_out={"tr00"})


def test_the_headline_is_the_best_of_the_shortlist_and_all_methods_when_none_is_there():
    summary = {"first": {"accuracy": 0.9, "fold_wins": 3}, "text_ebm": {"accuracy": 0.7, "fold_wins": 3},
               "hybrid": {"accuracy": 0.6, "fold_wins": 0}, "majority": {"accuracy": 0.5, "fold_wins": 0}}
    assert choose_by_cv(summary, {}) == "text_ebm"  # "first" is never a headline
    assert choose_by_cv(summary, {}, shortlist=["hybrid", "majority", "absent"]) == "hybrid"
    assert shortlisted(summary, ["absent"]) == ["text_ebm", "hybrid", "majority"]  # none listed: all
    assert choose_by_cv(summary, {}, shortlist=["absent"]) == "text_ebm"


def test_an_exact_tie_goes_to_the_method_listed_first_not_the_cheaper():
    """The seed-41 case of docs/results.md (issue 25): `latent_ebm` and `hybrid` both 69 of 240 right
    and one fold won each; the cheaper `latent_ebm` used to take it."""
    summary = {"latent_ebm": {"accuracy": 69 / 240, "fold_wins": 1}, "hybrid": {"accuracy": 69 / 240, "fold_wins": 1},
               "vote_hybrid": {"accuracy": 67 / 240, "fold_wins": 1}}
    costs = {"latent_ebm": 0.0006, "hybrid": 0.007, "vote_hybrid": 0.0075}
    assert choose_by_cv(summary, costs, shortlist=["hybrid", "latent_ebm", "vote_hybrid"]) == "hybrid"
    assert choose_by_cv(summary, costs, shortlist=["latent_ebm", "hybrid"]) == "latent_ebm"
    assert choose_by_cv(summary, costs) == "latent_ebm"  # no shortlist: cost breaks the tie, as before
    summary["latent_ebm"]["fold_wins"] = 2
    assert choose_by_cv(summary, costs, shortlist=["hybrid", "latent_ebm"]) == "latent_ebm"  # folds won first
