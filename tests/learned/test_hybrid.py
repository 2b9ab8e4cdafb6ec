"""Hybrid energy: recovers the sign of useful columns, NaN-safe, matches the EBM pairwise loss."""

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.learned.hybrid import HybridConfig, HybridEnergy, cross_validated_l2, pair_index
from impetus.learned.train import pairwise_loss
from impetus.selection.metrics import auroc


def toy(n_groups=80, n_per=6, seed=0):
    rng = np.random.default_rng(seed)
    n = n_groups * n_per
    y = rng.random(n) < 0.5
    return pd.DataFrame({
        "problem_id": np.repeat(np.arange(n_groups), n_per),
        "correct": y,
        "good": rng.normal(size=n) - 1.5 * y,  # lower for right ones: a proper energy
        "flipped": rng.normal(size=n) * 10 + 15 * y,  # higher for right ones (wrong sign, big scale)
        "noise": rng.normal(size=n) * 100,
    })


def test_hybrid_recovers_weight_signs():
    df = toy()
    h = HybridEnergy(HybridConfig(l2=1e-3)).fit(df, ["good", "flipped", "noise"])
    w = h.weights
    assert w["good"] > 0 and w["flipped"] < 0
    assert abs(w["noise"]) < min(abs(w["good"]), abs(w["flipped"]))
    test = toy(seed=1)
    e = h.energy(test)
    assert e.shape == (len(test),)
    assert auroc(test["correct"], e) > max(auroc(test["correct"], test["good"]), 0.85)


def test_hybrid_nan_safe_uses_train_mean():
    df = toy()
    df.loc[::7, "good"] = np.nan
    h = HybridEnergy(HybridConfig(l2=1e-3)).fit(df, ["good", "noise"])
    assert np.isfinite(list(h.weights.values())).all()
    row = pd.DataFrame({"good": [np.nan], "noise": [h.mean[1]]})
    assert h.energy(row)[0] == pytest.approx(0.0)  # NaN -> train mean -> z = 0


def test_a_value_far_outside_training_cannot_decide_alone():
    """A V2 edit can put a column hundreds of training deviations out (a forced, unlikely answer
    token's neg_logprob_answer); the linear energy clips each column to its training range instead of
    extrapolating, and the range survives saving."""
    df = toy()
    h = HybridEnergy(HybridConfig(l2=1e-3)).fit(df, ["good", "flipped", "noise"])
    edge = df[["good", "flipped", "noise"]].agg(["min", "max"])
    wild = pd.DataFrame({"good": [edge.loc["min", "good"] - 1e4], "flipped": [15.0], "noise": [0.0]})
    at_edge = wild.assign(good=edge.loc["min", "good"])
    assert h.energy(wild)[0] == pytest.approx(h.energy(at_edge)[0])  # no lower than the training minimum
    inside = df.iloc[:20]
    assert np.allclose(h.energy(inside), h._z(inside) @ h.coef)  # training rows are never clipped
    z = (inside[h.cols].to_numpy() - h.mean) / h.std
    assert np.allclose(h.energy(inside), z @ h.coef)
    again = HybridEnergy.from_dict(h.to_dict())
    assert again.energy(wild)[0] == pytest.approx(h.energy(wild)[0])


def test_pair_index_matches_pairwise_loss():
    df = toy(n_groups=5, n_per=4, seed=2)
    e = torch.tensor(df["good"].to_numpy())
    i, j, w = pair_index(df["problem_id"].to_numpy(), df["correct"].to_numpy())
    via_pairs = float((torch.tensor(w) * torch.nn.functional.softplus(e[i] - e[j])).sum())
    direct = pairwise_loss(e, torch.tensor(df["problem_id"].to_numpy()), torch.tensor(df["correct"].to_numpy()))
    assert via_pairs == pytest.approx(float(direct), rel=1e-9)


def test_hybrid_requires_pairs():
    df = pd.DataFrame({"problem_id": [0, 0], "correct": [True, True], "a": [0.0, 1.0]})
    with pytest.raises(ValueError):
        HybridEnergy(HybridConfig(l2=1e-3)).fit(df, ["a"])
    with pytest.raises(RuntimeError):
        HybridEnergy(HybridConfig(l2=1e-3)).energy(df)


def test_cross_validated_l2_prefers_strong_penalty_on_noise_and_weak_on_signal():
    rng = np.random.default_rng(0)
    rows = []
    for g in range(40):
        for s in range(6):
            right = s < 3
            rows.append({"problem_id": f"p{g}", "correct": right,
                         "signal": rng.normal(-1.0 if right else 1.0, 0.3),
                         **{f"noise{k}": rng.normal() for k in range(8)}})
    df = pd.DataFrame(rows)
    noise = [f"noise{k}" for k in range(8)]
    l2, losses = cross_validated_l2(df, noise, [1e-4, 1.0, 100.0], folds=4, seed=0)
    assert l2 == 100.0 and losses[100.0] <= losses[1e-4]
    l2, losses = cross_validated_l2(df, ["signal", *noise], [1e-4, 1.0, 100.0], folds=4, seed=0)
    assert l2 < 100.0 and losses[l2] < losses[100.0]


def test_hybrid_round_trips_through_a_plain_record():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"problem_id": np.repeat(np.arange(10), 4), "correct": np.tile([True, False, True, False], 10),
                       "a": rng.normal(size=40), "b": rng.normal(size=40)})
    h = HybridEnergy(HybridConfig(l2=0.1)).fit(df, ["a", "b"])
    back = HybridEnergy.from_dict(h.to_dict())
    np.testing.assert_allclose(back.energy(df), h.energy(df))
    assert back.cols == ["a", "b"] and back.config.l2 == 0.1
