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
