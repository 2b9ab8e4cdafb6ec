"""Cross-fitted learned energies: every train row is scored by a model that never saw its problem."""

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.learned.fitting import LearnedScorers, out_of_fold_energies
from impetus.learned.models import LatentEBM, LatentEBMConfig


def _groups(n_problems=9, n=4, h=8):
    rows = [{"problem_id": f"p{p}", "sample_idx": s, "correct": s == 0, "hidden_row": p * n + s}
            for p in range(n_problems) for s in range(n)]
    hidden = {"hidden_mean": np.random.default_rng(0).normal(size=(n_problems * n, h)).astype(np.float32)}
    return pd.DataFrame(rows), hidden


def test_out_of_fold_rows_are_scored_once_by_models_blind_to_them():
    groups, hidden = _groups()
    seen: list[set] = []

    def fit(train_groups: pd.DataFrame) -> LearnedScorers:
        seen.append(set(train_groups["problem_id"]))
        torch.manual_seed(len(seen))
        return LearnedScorers(latent_ebm=LatentEBM(LatentEBMConfig(input_dim=8, hidden=4, n_layers=2, dropout=0.1)), hidden_source="mean")

    out = out_of_fold_energies(groups, pd.DataFrame(), hidden, None, fit, folds=3, seed=0)
    assert len(seen) == 3 and all(len(s) == 6 for s in seen)  # 9 problems, 3 folds
    assert len(out) == len(groups) and not out.duplicated(["problem_id", "sample_idx"]).any()
    assert out["latent_ebm"].notna().all()
    # The three folds' held-out problems partition the problems; none was in its model's training set.
    held_out = [set(groups["problem_id"]) - s for s in seen]
    assert set().union(*held_out) == set(groups["problem_id"])
    assert sum(len(h) for h in held_out) == 9


def test_cross_fitting_needs_two_folds():
    groups, hidden = _groups()
    with pytest.raises(ValueError, match="at least 2 folds"):
        out_of_fold_energies(groups, pd.DataFrame(), hidden, None, lambda g: LearnedScorers(), folds=1, seed=0)


def test_cross_fitting_with_fewer_problems_than_folds_names_the_parameters():
    groups, hidden = _groups()
    two = groups[groups["problem_id"].isin(sorted(groups["problem_id"].unique())[:2])]
    with pytest.raises(ValueError, match="cross_fit_folds"):
        out_of_fold_energies(two, pd.DataFrame(), hidden, None, lambda g: LearnedScorers(), folds=3, seed=0)


def test_learned_scorers_round_trip_through_plain_records():
    from impetus.learned.hybrid import HybridConfig, HybridEnergy

    torch.manual_seed(0)
    latent = LatentEBM(LatentEBMConfig(input_dim=8, hidden=4, n_layers=1, dropout=0.0))
    df = pd.DataFrame({"problem_id": np.repeat(np.arange(6), 2), "correct": np.tile([True, False], 6),
                       "a": np.arange(12.0)})
    hybrid = HybridEnergy(HybridConfig(l2=0.5)).fit(df, ["a"])
    records = LearnedScorers(latent_ebm=latent, hidden_source="answer", hybrid=hybrid).to_records()
    assert records["text_ebm"] is None and records["latent_ebm"]["hidden_source"] == "answer"
    back = LearnedScorers.from_records(**records)
    x = torch.randn(3, 8)
    torch.testing.assert_close(back.latent_ebm(x), latent.eval()(x))
    assert back.hidden_source == "answer" and back.text_ebm is None
    np.testing.assert_allclose(back.hybrid.energy(df), hybrid.energy(df))


def test_scorer_yaml_block_converts_once_to_the_core_config():
    """The core configs repeat no YAML default; ScorerParams.to_core carries every YAML value."""
    import dataclasses
    from pathlib import Path

    import yaml

    from impetus.framework.config import ScorerParams
    from impetus.learned.models import TextEBMConfig
    from impetus.learned.train import TrainConfig

    for cls in (TextEBMConfig, LatentEBMConfig):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), cls
    block = yaml.safe_load((Path(__file__).parents[2] / "conf/base/parameters_scorer.yml").read_text())["scorer"]
    block["seed"], block["text_ebm"]["d_model"], block["latent_ebm"]["train"]["lr"] = 7, 24, 0.5
    core = ScorerParams.model_validate(block).to_core()
    assert core.seed == 7 and core.text_ebm.model["d_model"] == 24
    assert core.seeds == tuple(range(7, 7 + block["n_seeds"]))  # the ensemble's members: disjoint for seed + 100
    assert set(core.text_ebm.model) == {f.name for f in dataclasses.fields(TextEBMConfig)} - {"vocab_size"}
    assert set(core.latent_ebm.model) == {f.name for f in dataclasses.fields(LatentEBMConfig)} - {"input_dim"}
    assert isinstance(core.latent_ebm.train, TrainConfig) and core.latent_ebm.train.lr == 0.5
    assert core.latent_ebm.train.seed == 7 and core.hidden_source == block["latent_ebm"]["hidden_source"]
    assert core.l2_grid == block["hybrid"]["l2_grid"] and core.cross_fit_folds == block["hybrid"]["cross_fit_folds"]
    assert core.text_dtype == block["text_ebm"]["score_dtype"]
    block["text_ebm"]["score_dtype"] = "bfloat16"
    assert ScorerParams.model_validate(block).to_core().text_dtype == "bfloat16"
    block["text_ebm"]["score_dtype"] = "float16"  # not offered: LayerNorm inputs in fp16 overflow more easily
    with pytest.raises(ValueError, match="score_dtype"):
        ScorerParams.model_validate(block)


def test_text_score_dtype_travels_in_the_records_and_auto_follows_the_cpu(monkeypatch):
    """The scorer's dtype reaches every later stage through the TextEBM's record (older records mean
    fp32), and ``auto`` resolves on the machine that scores: bf16 only with a bf16 fast path."""
    from impetus.learned import fitting
    from impetus.learned.models import TextEBM, TextEBMConfig
    from impetus.lm import precision

    torch.manual_seed(0)
    text = TextEBM(TextEBMConfig(vocab_size=20, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_len=16, dropout=0.0))
    records = LearnedScorers(text_ebm=text, text_dtype="auto").to_records()
    assert records["text_ebm"]["score_dtype"] == "auto"
    assert LearnedScorers.from_records(**records).text_dtype == "auto"
    del records["text_ebm"]["score_dtype"]
    assert LearnedScorers.from_records(**records).text_dtype == "float32"
    monkeypatch.setattr(precision, "cpu_bf16_fast_path", lambda: (False, "neither AMX nor AVX512-BF16"))
    assert fitting.text_dtype("auto") == "float32" and fitting.text_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_bf16_fast_path", lambda: (True, "AMX"))
    assert fitting.text_dtype("auto") == "bfloat16" and fitting.text_dtype("float32") == "float32"
    assert fitting.text_dtype_choice("float32")[1] == "set by scorer.text_ebm.score_dtype"  # what the scorer node logs
