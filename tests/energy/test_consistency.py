"""Consistency energies on hand-made groups, plus one integration test with the real MiniLM."""

import time

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


def test_embed_texts_encodes_each_distinct_text_once_and_keeps_row_order(monkeypatch):
    from impetus.energy import consistency

    model = consistency.load_embedding_model()
    seen: list[list[str]] = []
    real = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: (seen.append(list(texts)), real(texts, **kw))[1])
    texts = ["12 + 30 = 42.", "The answer is 7.", "12 + 30 = 42.", None, "", "The answer is 7."]
    emb = embed_texts(texts)
    assert len(seen) == 1 and sorted(seen[0]) == sorted({"12 + 30 = 42.", "The answer is 7.", ""})
    one_by_one = np.stack([real(["" if t is None else t], normalize_embeddings=True)[0] for t in texts])
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)
    assert emb.shape == (6, 384) and np.allclose(emb[0], emb[2]) and not np.allclose(emb[0], emb[1])


def test_consistency_energies_time_excludes_loading_the_model(monkeypatch):
    import pandas as pd

    from impetus.energy import consistency

    graded = pd.DataFrame({"problem_id": ["a", "a", "b"], "completion": ["x", "y", "x"], "answer": ["1", "1", None]})
    real = consistency.load_embedding_model

    def slow_load(*args, **kwargs):  # stands in for a cold load of the model (seconds)
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(consistency, "load_embedding_model", slow_load)
    t0 = time.perf_counter()
    out, seconds = consistency.consistency_energies(graded, None, batch_size=8)
    assert time.perf_counter() - t0 - seconds >= 0.5  # the load was not charged to the energy
    assert out["answer_agreement"].tolist() == [-1.0, -1.0, 0.0]


@pytest.mark.integration
def test_embed_texts_in_bf16_autocast_stays_close_to_fp32():
    """``dtype=bfloat16`` really encodes in half precision (the vectors move) yet keeps fp32 output
    and each text's direction (cosine >= 0.99), so the consistency energies keep their order."""
    texts = ["12 + 30 = 42. The answer is 42.", "30 + 12 makes 42.", "The answer is 7.", "12 + 30 = 41."]
    full = embed_texts(texts)
    half = embed_texts(texts, dtype="bfloat16")
    assert half.dtype == np.float32 and half.shape == full.shape
    assert not np.array_equal(half, full)
    assert (np.sum(half * full, axis=1) >= 0.99).all()
    ref, got = embedding_consistency(full, [0] * 4), embedding_consistency(half, [0] * 4)
    assert np.argsort(ref).tolist() == np.argsort(got).tolist()
