"""Fitting and applying the learned energies on candidate tables (Kedro-free glue).

Ties the generic EBM code (:mod:`impetus.learned.models`, :mod:`impetus.learned.train`,
:mod:`impetus.learned.hybrid`) to the project's tables: ``graded`` candidates, ``energies``
(training-free columns, lower = better) and the pooled ``hidden`` states (recorded while decoding,
or from the teacher-forced pass), all aligned by (problem_id, sample_idx).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from impetus.energy.recorded import layer_columns, layer_key
from impetus.energy.registry import energy_columns
from impetus.learned.hybrid import HybridConfig, HybridEnergy, cross_validated_l2, group_folds
from impetus.learned.mining import LeakageError, mine_groups
from impetus.learned.ensemble import EnsembleEBM, energy_scores
from impetus.learned.models import LatentEBM, LatentEBMConfig, TextEBM, TextEBMConfig, TokenInputs, encode_texts
from impetus.learned.persist import ebm_from_dict, ebm_to_dict
from impetus.learned.train import TrainConfig, TrainResult, train_ebm

logger = logging.getLogger(__name__)

KEYS = ["problem_id", "sample_idx"]


def join_candidates(graded: pd.DataFrame, energies: pd.DataFrame, hidden: dict[str, Any] | None) -> pd.DataFrame:
    """Graded candidates + their energies, plus ``hidden_row`` (row of the hidden-state arrays).

    Fails loudly if the tables are not aligned, rather than silently scoring the wrong vectors.
    """
    cols = [c for c in energies.columns if c not in graded.columns or c in KEYS]
    df = graded.merge(energies[cols], on=KEYS, how="left", validate="one_to_one")
    if len(df) != len(graded) or df[energy_columns(energies.columns)].isna().all(axis=1).any():
        raise ValueError("energies table does not cover every graded candidate; rerun the energies stage")
    if hidden is not None:
        pos = pd.DataFrame({"problem_id": hidden["problem_id"], "sample_idx": hidden["sample_idx"]})
        pos["hidden_row"] = np.arange(len(pos))
        df = df.merge(pos, on=KEYS, how="left", validate="one_to_one")
        if df["hidden_row"].isna().any():
            raise ValueError("hidden states are missing for some candidates; rerun the energies stage")
        df["hidden_row"] = df["hidden_row"].astype(int)
    return df


def build_groups(
    graded: pd.DataFrame, energies: pd.DataFrame, hidden: dict[str, Any] | None, eval_ids: set[str]
) -> pd.DataFrame:
    """EORM training groups: all candidates of train problems with >=1 right and >=1 wrong one.

    Raises :class:`~impetus.learned.mining.LeakageError` if an eval problem is here.
    """
    leaked = set(graded["problem_id"]) & set(eval_ids)
    if leaked:  # checked before joining, so the error names the ids rather than a join mismatch
        raise LeakageError(leaked)
    return mine_groups(join_candidates(graded, energies, hidden), eval_ids=eval_ids)


def hidden_matrix(hidden: dict[str, Any], rows: np.ndarray, source: str) -> np.ndarray:
    """Feature vectors for the LatentEBM: last-layer ``mean``, ``answer`` or ``both`` (concatenated);
    ``layer``: the mean states of the further recorded layers (``model.hidden_layers``, ``hidden_l<k>``),
    ``layer_both``: those and the last layer's ``both``; ``l<k>`` / ``l<k>_both``: recorded layer k
    alone / with ``both`` (the candidates of ``hidden_source: cv``, :mod:`impetus.learned.layers`)."""
    cols = source_columns(hidden, source)
    return np.concatenate([np.asarray(hidden[k])[rows] for k in cols], axis=1).astype(np.float32)


def source_columns(hidden: dict[str, Any], source: str) -> list[str]:
    layers = layer_columns(hidden)
    both = ["hidden_mean", "hidden_answer"]
    parts = {"mean": ["hidden_mean"], "answer": ["hidden_answer"], "both": both, "layer": layers,
             "layer_both": [*layers, *both]}
    one = re.fullmatch(r"l(\d+)(_both)?", source)
    if one:
        key = layer_key(int(one.group(1)))
        if key not in hidden:
            raise ValueError(f"hidden source {source!r} needs {key}, not recorded (recorded: {layers or 'none'}): "
                             "add the layer to model.hidden_layers and score again")
        return [key, *(both if one.group(2) else [])]
    if source not in parts:
        raise ValueError(f"hidden source must be one of {sorted(parts)}, l<k> or l<k>_both, got {source!r}")
    if not parts[source]:
        raise ValueError(f"hidden source {source!r} needs states of further layers: set model.hidden_layers "
                         "(e.g. [mid]) and score again")
    return parts[source]


def text_inputs(tokenizer: Any, df: pd.DataFrame, problems: pd.DataFrame, max_len: int) -> TokenInputs:
    """Token inputs (question + completion) for the TextEBM, one row per candidate of ``df``."""
    question = df["problem_id"].map(problems.set_index("problem_id")["question"])
    if question.isna().any():
        raise ValueError("some candidates have no question in the problems table")
    ids, mask = encode_texts(tokenizer, question.tolist(), df["completion"].tolist(), max_len=max_len)
    return TokenInputs(ids, mask)


def distinct_keys(df: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(first, codes)``: the index of each distinct ``cols`` tuple's first row, and for every row the
    position of its tuple in ``first`` (so ``values[first][codes]`` spreads per-tuple values back)."""
    codes, _ = pd.factorize(pd.MultiIndex.from_frame(df[cols].astype(str)))
    first = np.flatnonzero(~pd.Series(codes).duplicated().to_numpy())
    return first, codes


def text_energy_scores(model: Any, tokenizer: Any, df: pd.DataFrame, problems: pd.DataFrame, held_out: bool = False,
                       dtype: str = "float32") -> tuple[np.ndarray, np.ndarray | None]:
    """The TextEBM's energies (and ensemble members' ``z``) for every row of ``df``, each distinct
    (problem, completion) encoded once: a text energy is a function of those two alone, and sampled
    candidates repeat (800 candidates of the default run hold 330 distinct ones), so this scores 2.4x
    fewer rows there at the same values (up to batch-composition rounding). ``dtype``: what the
    encoder layers run in (``auto``: :func:`~impetus.lm.precision.choose_dtype` on the CPU)."""
    first, codes = distinct_keys(df, ["problem_id", "completion"])
    unique = df.iloc[first]
    inputs = text_inputs(tokenizer, unique, problems, model.config.max_len)
    # 128 rows a batch: fewer, fuller length-sorted batches (benchmarks/bench_scoring_cost.py).
    energy, z = energy_scores(model, inputs, unique["problem_id"].to_numpy(), batch_size=128, held_out=held_out,
                              dtype=text_dtype(dtype))
    return energy[codes], (None if z is None else z[codes])


def text_dtype(requested: str) -> str:
    """The dtype the TextEBM scores in: ``requested``, or for ``auto`` bf16 where this CPU has a bf16
    fast path and fp32 elsewhere (the rule of ``model.dtype: auto``; EBMs score on the CPU)."""
    return text_dtype_choice(requested)[0]


def text_dtype_choice(requested: str) -> tuple[str, str]:
    """:func:`text_dtype` and why it was chosen, naming the setting (``scorer.text_ebm.score_dtype``)."""
    from impetus.lm.precision import choose_dtype

    return choose_dtype(requested, "cpu", "scorer.text_ebm.score_dtype")


def fit_text_ebm(
    groups: pd.DataFrame, problems: pd.DataFrame, tokenizer: Any, model_cfg: dict, train_cfg: TrainConfig
) -> TrainResult:
    """Train a TextEBM (EORM-style encoder) on the mined groups."""
    cfg = TextEBMConfig(vocab_size=len(tokenizer), **model_cfg)
    import torch

    torch.manual_seed(train_cfg.seed)  # weight init is part of "same seed, same model"
    model = TextEBM(cfg)
    inputs = text_inputs(tokenizer, groups, problems, cfg.max_len)
    return train_ebm(model, inputs, groups["problem_id"].to_numpy(), groups["correct"].to_numpy(), train_cfg)


def fit_latent_ebm(
    groups: pd.DataFrame, hidden: dict[str, Any], source: str, model_cfg: dict, train_cfg: TrainConfig
) -> TrainResult:
    """Train a LatentEBM (MLP over pooled hidden states) on the mined groups."""
    x = hidden_matrix(hidden, groups["hidden_row"].to_numpy(), source)
    import torch

    torch.manual_seed(train_cfg.seed)
    model = LatentEBM(LatentEBMConfig(input_dim=x.shape[1], **model_cfg))
    return train_ebm(model, x, groups["problem_id"].to_numpy(), groups["correct"].to_numpy(), train_cfg)


@dataclass
class LearnedScorers:
    """Everything rerank needs to score new candidates with the learned energies.

    Passed from the ``scorer`` stage to ``rerank_eval`` (and V2/EBD) as plain records
    (:meth:`to_records` / :meth:`from_records`): tensors, numbers and strings only, so the catalog
    stores them without pickle and loads them with ``torch.load(weights_only=True)``.
    """

    text_ebm: TextEBM | EnsembleEBM | None = None
    latent_ebm: LatentEBM | EnsembleEBM | None = None
    hidden_source: str = "both"
    hybrid: HybridEnergy | None = None
    hidden_cv: dict[str, dict[str, float]] | None = None  # each candidate source's CV scores (hidden_source: cv)
    text_dtype: str = "float32"  # what the TextEBM's encoder scores in (scorer.text_ebm.score_dtype; auto resolved per machine)

    def to_records(self) -> dict[str, Any]:
        """``{"text_ebm", "latent_ebm", "hybrid"}``: one plain record per learned energy (or None)."""
        latent = None
        if self.latent_ebm is not None:
            latent = {**ebm_to_dict(self.latent_ebm), "hidden_source": self.hidden_source, "hidden_cv": self.hidden_cv}
        return {
            "text_ebm": None if self.text_ebm is None else {**ebm_to_dict(self.text_ebm), "score_dtype": self.text_dtype},
            "latent_ebm": latent,
            "hybrid": None if self.hybrid is None else self.hybrid.to_dict(),
        }

    @classmethod
    def from_records(
        cls, text_ebm: dict | None = None, latent_ebm: dict | None = None, hybrid: dict | None = None
    ) -> "LearnedScorers":
        """Inverse of :meth:`to_records` (each record may come from its own catalog entry)."""
        return cls(
            text_ebm=None if text_ebm is None else ebm_from_dict(text_ebm),
            latent_ebm=None if latent_ebm is None else ebm_from_dict(latent_ebm),
            hidden_source=(latent_ebm or {}).get("hidden_source", "both"),
            hidden_cv=(latent_ebm or {}).get("hidden_cv"),
            hybrid=None if hybrid is None else HybridEnergy.from_dict(hybrid),
            text_dtype=(text_ebm or {}).get("score_dtype", "float32"),  # records from before it existed: fp32
        )

    @property
    def can_hold_out(self) -> bool:
        """Whether every EBM here is an ensemble with fold members, so training-side problems can be
        scored by the member that held them out (``held_out`` of :func:`add_learned_energies`)."""
        ebms = [m for m in (self.text_ebm, self.latent_ebm) if m is not None]
        return bool(ebms) and all(isinstance(m, EnsembleEBM) and any(m.trained_on) for m in ebms)


def dev_held_out(scorers: LearnedScorers, stage: str) -> bool:
    """Whether ``stage`` (V2, EBD, the compute-matched choice) can score its dev problems with the
    fold members that held them out: the learned energies measured on eval are refit on every
    train-side problem, dev included, so their seed members would score dev in sample and make any
    option that uses them look better on dev than it will on eval. Logged either way."""
    if scorers.can_hold_out:
        logger.info("%s: dev problems get held-out learned energies (the fold member that held each out)", stage)
        return True
    logger.warning("%s: the learned energies have no fold members (scorer.fold_members: false), so dev problems "
                   "are scored in sample: settings chosen on dev will favour options that use them", stage)
    return False


def add_learned_energies(
    df: pd.DataFrame,
    problems: pd.DataFrame,
    hidden: dict[str, Any] | None,
    tokenizer: Any,
    scorers: LearnedScorers,
    members: dict[str, np.ndarray] | None = None,
    held_out: bool = False,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Return ``df`` with ``text_ebm``/``latent_ebm``/``hybrid`` columns and scoring seconds.

    An ensemble scores each row without the fold members trained on its problem
    (:func:`~impetus.learned.ensemble.ensemble_scores`); pass a dict as ``members`` to get each
    ensemble's per-member standardised energies (``[rows, K]``) under its name. ``held_out``: rows
    of training problems get only the fold member that held them out (dev rows for choosing V2's,
    EBD's and the compute-matched settings); the hybrid's weights were still fit with them."""
    out = df.copy()
    seconds: dict[str, float] = {}
    pids = out["problem_id"].to_numpy()
    if scorers.text_ebm is not None:
        t0 = time.perf_counter()
        energy, z = text_energy_scores(scorers.text_ebm, tokenizer, out, problems, held_out, scorers.text_dtype)
        out["text_ebm"] = energy.astype(float)
        seconds["text_ebm"] = time.perf_counter() - t0
        if members is not None and z is not None:
            members["text_ebm"] = z
    if scorers.latent_ebm is not None and hidden is not None:
        t0 = time.perf_counter()
        x = hidden_matrix(hidden, out["hidden_row"].to_numpy(), scorers.hidden_source)
        energy, z = energy_scores(scorers.latent_ebm, x, pids, batch_size=1024, held_out=held_out)
        out["latent_ebm"] = energy.astype(float)
        seconds["latent_ebm"] = time.perf_counter() - t0
        if members is not None and z is not None:
            members["latent_ebm"] = z
    if scorers.hybrid is not None:
        t0 = time.perf_counter()
        missing = [c for c in scorers.hybrid.cols if c not in out.columns]
        if missing:
            raise ValueError(f"hybrid energy needs columns {missing}, absent from the candidates table")
        out["hybrid"] = scorers.hybrid.energy(out)
        seconds["hybrid"] = time.perf_counter() - t0
    return out, seconds


def out_of_fold_energies(
    groups: pd.DataFrame,
    problems: pd.DataFrame,
    hidden: dict[str, Any] | None,
    tokenizer: Any,
    fit: Callable[[pd.DataFrame], LearnedScorers],
    folds: int,
    seed: int,
) -> pd.DataFrame:
    """``groups`` plus learned-energy columns scored by models that never saw the row's problem.

    Cross-fitting (as in stacking): problems are split into ``folds`` parts; for each part the
    learned energies are fit on the others and score it. A combination fit on in-sample EBM scores
    would over-trust them, since an EBM separates its own training groups far better than new ones.
    """
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    n_problems = groups["problem_id"].nunique()
    if n_problems < folds:  # an empty fold would reach the tokenizer as an empty batch
        raise ValueError(
            f"cross-fitting needs at least {folds} training problems with a right and a wrong candidate, "
            f"got {n_problems}: raise ingest.n_train or sampling.n, or lower scorer.hybrid.cross_fit_folds"
        )
    fold = group_folds(groups["problem_id"], folds, seed)
    parts = []
    for k in range(folds):
        scorers = fit(groups[fold != k])
        scored, _ = add_learned_energies(groups[fold == k], problems, hidden, tokenizer, scorers)
        parts.append(scored)
    return pd.concat(parts).sort_values(KEYS, kind="mergesort").reset_index(drop=True)


def fit_hybrid(
    df: pd.DataFrame, cols: list[str], l2_grid: list[float], folds: int, seed: int
) -> tuple[HybridEnergy, dict[float, float]]:
    """Fit the hybrid on train groups (with out-of-fold learned energies), L2 chosen by group CV.

    Returns the hybrid refit on all rows with the chosen L2, and the CV pairwise loss per L2.
    """
    usable = [c for c in cols if c in df.columns and df[c].notna().any()]
    l2, cv_loss = cross_validated_l2(df, usable, l2_grid, folds, seed)
    hybrid = HybridEnergy(config=HybridConfig(l2=l2)).fit(df, usable)
    logger.info("Hybrid energy (L2 %g by %d-fold CV) fit on %d train candidates: %s",
                l2, folds, len(df), hybrid.weights)
    return hybrid, cv_loss


def score_split(
    graded: pd.DataFrame, energies: pd.DataFrame, hidden: dict[str, Any] | None, problems: pd.DataFrame,
    tokenizer: Any, scorers: LearnedScorers, members: dict[str, np.ndarray] | None = None, held_out: bool = False,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One split's candidates joined with their energies plus the learned ones, and scoring seconds
    (``members``, ``held_out``: see :func:`add_learned_energies`)."""
    return add_learned_energies(join_candidates(graded, energies, hidden), problems, hidden, tokenizer, scorers,
                                members, held_out)


@dataclass(frozen=True)
class EBMSpec:
    """One learned energy's size and training loop, as :func:`fit_learned_energies` takes them.

    ``model`` holds the fields of :class:`~impetus.learned.models.TextEBMConfig` (or
    ``LatentEBMConfig``) except the input size, which the data decides (``vocab_size`` from the
    tokenizer, ``input_dim`` from the hidden states); ``train`` is the loop's settings.
    """

    model: dict[str, Any]
    train: TrainConfig


@dataclass(frozen=True)
class ScorerConfig:
    """Everything :func:`fit_learned_energies` needs; no defaults (built from ``parameters_scorer.yml``
    by :meth:`impetus.framework.config.ScorerParams.to_core`, or by hand in a notebook)."""

    seeds: tuple[int, ...]  # one ensemble member per seed; the first also seeds the folds and the hybrid's CV
    fold_members: bool  # the cross-fit fold models join the ensembles
    progress: bool
    text_ebm: EBMSpec
    text_dtype: str  # auto | float32 | bfloat16: what the TextEBM's encoder scores candidates in (training: fp32)
    latent_ebm: EBMSpec
    hidden_source: str  # mean | answer | both | layer | layer_both | l<k> | l<k>_both | cv
    hybrid_columns: list[str] | None  # None: the energy registry's hybrid inputs
    l2_grid: list[float]
    cross_fit_folds: int

    @property
    def seed(self) -> int:
        """The seed of the cross-fitting folds, the hybrid's L2 CV and the fold members: the first."""
        return self.seeds[0]
