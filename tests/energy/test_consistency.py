"""Consistency energies on hand-made groups, plus one integration test with the real MiniLM."""

import numpy as np
import pytest

from impetus.energy import answer_agreement, embed_texts, embedding_consistency


def test_embedding_consistency_hand_groups():
    e = np.array(
        [
            [1.0, 0.0],  # group a: three identical directions -> -1 each
            [2.0, 0.0],
            [1.0, 0.0],
            [0.0, 1.0],  # group b: orthogonal pair -> 0 each
            [1.0, 0.0],
            [1.0, 1.0],  # group c: alone -> 0
        ]
    )
    groups = ["a", "a", "a", "b", "b", "c"]
    out = embedding_consistency(e, groups)
    np.testing.assert_allclose(out, [-1, -1, -1, 0, 0, 0], atol=1e-12)


def test_embedding_consistency_mean_over_others_interleaved_groups():
    s = np.sqrt(0.5)
    e = np.array([[1.0, 0.0], [5.0, 5.0], [0.0, 1.0], [s, s]])
    groups = [7, 8, 7, 7]  # non-contiguous group ids
    out = embedding_consistency(e, groups)
    # row0: cos to rows 2,3 = 0, s -> mean s/2; row2 same; row3: s, s -> s
    np.testing.assert_allclose(out, [-s / 2, 0.0, -s / 2, -s], atol=1e-12)


def test_answer_agreement_counts_itself():
    answers = ["5", "5", " 5", "7", "3", None, "3", None, "x"]
    groups = [1, 1, 1, 1, 2, 2, 2, 2, 3]
    out = answer_agreement(answers, groups)
    np.testing.assert_allclose(out, [-3 / 4, -3 / 4, -3 / 4, -1 / 4, -1 / 2, 0.0, -1 / 2, 0.0, -1.0])


def test_answer_agreement_nan_is_missing():
    out = answer_agreement([float("nan"), "1"], ["p", "p"])
    np.testing.assert_allclose(out, [0.0, -0.5])


@pytest.mark.integration
def test_embed_texts_minilm_paraphrase_closer():
    texts = [
        "The cat sat on the mat.",
        "A cat was sitting on the rug.",
        "Quarterly revenue grew by twelve percent.",
    ]
    emb = embed_texts(texts)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    assert embed_texts([]).shape == (0, 384)
    cons = embedding_consistency(emb, [0, 0, 0])
    assert cons[2] > cons[0]  # the odd one out is least consistent (highest energy)
