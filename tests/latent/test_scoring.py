"""New V2/EBD answers get consistency energies from the registry's functions, against the V1 pool."""

from __future__ import annotations

import numpy as np

from impetus.latent.scoring import against_pool


def test_a_new_answer_is_scored_as_one_more_pool_member():
    pool_answers = ["7", "7", "3", None]
    pool_emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    agreement, consistency = against_pool(pool_answers, pool_emb, ["7", "5", None], emb)
    # "7": itself and two pool members of five; "5": only itself; no answer: the worst value, 0
    np.testing.assert_allclose(agreement, [-3 / 5, -1 / 5, 0.0])
    unit = pool_emb / np.linalg.norm(pool_emb, axis=1, keepdims=True)
    expected = [-(unit @ (e / np.linalg.norm(e))).mean() for e in emb]  # mean cosine to the pool only
    np.testing.assert_allclose(consistency, expected)
    assert consistency[0] == consistency[2]  # new answers never count each other


def test_without_embeddings_the_consistency_is_nan_and_the_agreement_unchanged():
    with_emb = against_pool(["7", "3"], np.eye(2), ["7", "5"], np.eye(2))
    without = against_pool(["7", "3"], None, ["7", "5"], None)
    np.testing.assert_array_equal(without[0], with_emb[0])
    assert np.isnan(without[1]).all() and np.isfinite(with_emb[1]).all()


def test_new_answers_are_embedded_only_for_an_energy_that_reads_embedding_consistency():
    """The registry's cost keys decide: the energy itself, or a hybrid with it among its inputs."""
    import pandas as pd

    from impetus.latent.scoring import NewAnswerScorer
    from impetus.learned.fitting import LearnedScorers
    from impetus.learned.hybrid import HybridConfig, HybridEnergy

    df = pd.DataFrame({"problem_id": np.repeat(np.arange(4), 2), "correct": np.tile([True, False], 4),
                       "spilled_max": np.arange(8.0), "embedding_consistency": np.arange(8.0)[::-1]})
    problems = pd.DataFrame({"problem_id": ["p0"], "question": ["1 + 1"], "gold": ["2"], "choices": None, "meta": "{}"})
    pool = pd.DataFrame({"problem_id": ["p0"], "completion": ["2"], "answer": ["2"]})

    def embeds(energy, cols):
        hybrid = None if cols is None else HybridEnergy(HybridConfig(l2=0.1)).fit(df, cols)
        return NewAnswerScorer(None, None, problems, pool, LearnedScorers(hybrid=hybrid), None, energy=energy).embed

    assert not embeds("hybrid", ["spilled_max"]) and embeds("hybrid", ["spilled_max", "embedding_consistency"])
    assert embeds("embedding_consistency", None) and not embeds("spilled_max", None)
    assert embeds(None, ["spilled_max"])  # no energy named: every column, as before
