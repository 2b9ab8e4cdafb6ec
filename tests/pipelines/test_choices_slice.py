"""mining -> scorer -> rerank_eval on synthetic scored choices (``sampling.candidates: choices``).

Four choices per problem, one right. The summed log-likelihood (lm-eval's acc) carries a weak signal,
a middle layer's states (``hidden_l2``) a strong one, another layer's (``hidden_l1``) and the last
layer's none: ``hidden_source: cv`` must find layer 2, the LatentEBM reading it must beat the
baselines, the report must show both lm-eval rows, the baseline chosen on train-side problems, the
layer table, AUROCs, and leave votes out; no eval problem may be mined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from impetus.framework.config import MiningParams, RerankParams, ScorerParams
from impetus.learned.mining import LeakageError
from impetus.pipelines.mining.pipeline import create_pipeline as mining
from impetus.pipelines.rerank_eval.pipeline import create_pipeline as rerank_eval
from impetus.pipelines.scorer.pipeline import create_pipeline as scorer
from impetus.testing import tiny_tokenizer

K, H = 4, 16


def _split(prefix: str, n: int, rng: np.random.Generator):
    problems, rows, energies, hidden = [], [], [], {"mean": [], "mid": []}
    for p in range(n):
        pid, gold = f"{prefix}{p:03d}", int(rng.integers(0, K))
        problems.append({"problem_id": pid, "question": f"Which one is {gold}?", "gold": "ABCD"[gold]})
        for j in range(K):
            right = j == gold
            text = f"choice {j}" + "x" * int(rng.integers(0, 6))
            rows.append({"problem_id": pid, "sample_idx": j, "completion": " " + text, "finish_reason": "choice",
                         "answer": "ABCD"[j], "correct": right, "gen_seconds": 0.05, "n_tokens": len(text) + 1})
            ll = float(rng.normal(-5.0 if right else -6.0, 1.5))
            energies.append({"problem_id": pid, "sample_idx": j, "neg_loglik": -ll,
                             "neg_loglik_per_char": -ll / len(text), "marginal_max": float(rng.normal()),
                             "answer_span_found": True})
            mid = rng.normal(size=H)
            mid[0] += 2.5 if right else -2.5
            hidden["mid"].append(mid)
            hidden["mean"].append(rng.normal(size=H))
    ids = {"problem_id": np.array([r["problem_id"] for r in rows]), "sample_idx": np.array([r["sample_idx"] for r in rows])}
    hid = ids | {"hidden_mean": np.array(hidden["mean"], np.float32), "hidden_answer": np.array(hidden["mean"], np.float32),
                 "hidden_l1": rng.normal(size=(len(rows), H)).astype(np.float32),
                 "hidden_l2": np.array(hidden["mid"], np.float32)}
    return pd.DataFrame(problems), pd.DataFrame(rows), pd.DataFrame(energies), hid


@pytest.fixture()
def catalog(tmp_path) -> DataCatalog:
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    rng = np.random.default_rng(1)
    splits = {name: _split(prefix, n, rng) for name, prefix, n in (("train", "tr", 90), ("dev", "dv", 30), ("eval", "ev", 80))}
    fast = {"epochs": 12, "lr": 0.003, "weight_decay": 0.0, "batch_groups": 8, "patience": 4, "val_fraction": 0.2}
    timing = {"lm_seconds": 4.0, "embedding_seconds": 0.0}
    data = {"base_lm": {"path": str(tmp_path / "lm")}, "params:mining": MiningParams(hard_negative_energy=None)}
    for name, (p, g, e, h) in splits.items():
        data |= {f"problems_{name}": p, f"graded_{name}": g, f"energies_{name}": e, f"hidden_{name}": h,
                 f"energies_{name}_timing": timing}
    data["params:scorer"] = ScorerParams.model_validate({
        "seed": 0, "n_seeds": 1, "fold_members": True, "progress": False, "allow_pickle": False,
        "text_ebm": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 64, "dropout": 0.1, "score_dtype": "auto", "train": fast},
        "latent_ebm": {"hidden_source": "cv", "hidden": 32, "n_layers": 2, "dropout": 0.1, "train": fast},
        "hybrid": {"columns": None, "cross_fit_folds": 2, "l2_grid": [0.01, 1.0]},
    })
    data["params:rerank_eval"] = RerankParams(
        selection="cv", cv_folds=3, shortlist=None, tau_grid=[1.0], n_boot=200, acc_vs_n_subsamples=2, weighted_vote=["hybrid"],
        curves=["first", "hybrid"], seed=0, adaptive={"wave": 2, "thresholds": [1.0], "max_drop": 0.01, "energy": "hybrid"})
    return DataCatalog({k: MemoryDataset(v) for k, v in data.items()})


def test_choices_slice_reports_lm_eval_baselines_and_a_layer_reading_energy(catalog):
    SequentialRunner().run(mining() + scorer() + rerank_eval(), catalog)
    result = catalog["rerank_metrics"].load()
    m = result["methods"]
    assert result["candidates"] == "choices" and result["n_candidates"] == K and result["n_problems"] == 80
    assert {"loglik", "loglik_norm", "latent_ebm", "hybrid", "oracle"} <= set(m)
    assert not any(n.startswith("vote_") or n in ("first", "majority") for n in m)  # votes mean nothing on choices
    assert result["baseline"] in ("loglik", "loglik_norm")
    sel = result["selection"]["methods"]
    assert sel[result["baseline"]]["accuracy"] >= max(sel["loglik"]["accuracy"], sel["loglik_norm"]["accuracy"])
    # The middle layer carries the signal: the LatentEBM reading it beats lm-eval's rules by far.
    assert m["latent_ebm"]["auroc_within"] > 0.85 and m["latent_ebm"]["accuracy"] > m["loglik"]["accuracy"] + 0.2
    assert 0.3 < m["marginal_max"]["auroc"] < 0.7
    # Cross-validation on train-side problems found the layer that carries the signal.
    feats = result["latent_features"]
    assert feats["source"] in ("l2_both", "layer_both") and list(feats["cv"]) == ["both", "l1_both", "l2_both", "layer_both"]
    assert feats["cv"]["l2_both"]["auroc"] > feats["cv"]["both"]["auroc"] + 0.2
    assert feats["cv"]["l2_both"]["auroc"] > feats["cv"]["l1_both"]["auroc"] + 0.2
    h = result["headline"]
    assert h["method"] in ("latent_ebm", "hybrid") and h["gain_vs_baseline_ci"][0] > 0
    assert h["gain_vs_baseline"] == pytest.approx(m[h["method"]]["accuracy"] - m[result["baseline"]]["accuracy"])
    report = catalog["rerank_report"].load()
    assert "| loglik" in report and "| loglik_norm" in report and "AUROC within" in report and "Left out on choices" in report
    metrics = catalog["metrics_rerank_eval"].load()
    assert metrics["auroc_within/latent_ebm"]["value"] == pytest.approx(m["latent_ebm"]["auroc_within"])
    assert metrics["rerank/baseline/loglik"]["value"] == pytest.approx(m["loglik"]["accuracy"])
    assert metrics["latent_features/l2_both/auroc"]["value"] == pytest.approx(feats["cv"]["l2_both"]["auroc"])
    assert f"The LatentEBM reads `{feats['source']}`" in report and "| l2_both" in report
    assert "latent_layers.png" in catalog["rerank_plots"].load()  # the per-layer AUROC as a plot too


def test_mining_refuses_an_eval_problem_among_the_choices(catalog):
    leaked = catalog["graded_train"].load().copy()
    leaked.loc[leaked["problem_id"] == "tr000", "problem_id"] = "ev000"
    catalog["graded_train"] = MemoryDataset(leaked)
    with pytest.raises(LeakageError, match="ev000"):
        SequentialRunner().run(mining(), catalog)
