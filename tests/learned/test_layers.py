"""``hidden_source: cv`` (``impetus.learned.layers``): the layer set with the best out-of-fold
within-problem AUROC on train-side groups wins; ``l<k>`` sources read one recorded layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from impetus.learned.fitting import hidden_matrix
from impetus.learned.layers import choose_hidden_source, source_candidates
from impetus.learned.train import TrainConfig

H = 8


def _groups(n_problems: int, signal_layer: int, seed: int = 0):
    """Four rows per problem, one right; only ``hidden_l<signal_layer>`` tells them apart."""
    rng = np.random.default_rng(seed)
    n = 4 * n_problems
    correct = np.zeros(n, bool)
    correct[np.arange(n_problems) * 4 + rng.integers(0, 4, n_problems)] = True
    hidden = {k: rng.normal(size=(n, H)).astype(np.float32) for k in ("hidden_mean", "hidden_answer", "hidden_l3", "hidden_l6")}
    hidden[f"hidden_l{signal_layer}"][:, 0] += np.where(correct, 1.5, -1.5)
    groups = pd.DataFrame({"problem_id": np.repeat([f"p{i}" for i in range(n_problems)], 4),
                           "sample_idx": np.tile(np.arange(4), n_problems), "correct": correct,
                           "hidden_row": np.arange(n)})
    return groups, hidden


CFG = TrainConfig(epochs=8, lr=0.01, weight_decay=0.0, batch_groups=16, patience=3, val_fraction=0.2,
                  progress=False)


@pytest.mark.parametrize("layer", [3, 6])
def test_cross_validation_finds_the_layer_that_carries_the_signal(layer):
    groups, hidden = _groups(150, layer)
    best, table = choose_hidden_source(groups, hidden, {"hidden": 16, "n_layers": 0, "dropout": 0.0}, CFG, 3, 0)
    other = 9 - layer
    assert list(table) == ["both", "l3_both", "l6_both", "layer_both"]
    assert best in (f"l{layer}_both", "layer_both")
    assert table[f"l{layer}_both"]["auroc"] > 0.8 and table[f"l{other}_both"]["auroc"] < 0.65
    assert table["both"]["auroc"] < 0.65 and table[f"l{layer}_both"]["top1"] > table["both"]["top1"] + 0.3


def test_one_layer_sources_and_their_errors():
    _, hidden = _groups(2, 3)
    rows = np.array([0, 5])
    np.testing.assert_array_equal(hidden_matrix(hidden, rows, "l3"), hidden["hidden_l3"][rows])
    assert hidden_matrix(hidden, rows, "l6_both").shape == (2, 3 * H)
    with pytest.raises(ValueError, match="hidden_l9, not recorded"):
        hidden_matrix(hidden, rows, "l9_both")
    assert source_candidates({"hidden_mean": 0, "hidden_l15": 0}) == ["both", "l15_both"]
