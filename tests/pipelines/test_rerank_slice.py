"""mining -> scorer -> rerank_eval with SequentialRunner on synthetic candidates with a known signal.

Candidates are made so that one training-free energy (``spilled_max``) and the hidden states carry
the correctness signal while another (``marginal_max``) is noise; the learned energies must pick
the signal up and every reported number must be consistent with the tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from impetus.framework.config import LearningCurveParams, MiningParams, RerankParams, ScorerParams
from impetus.learned.mining import LeakageError
from impetus.pipelines.learning_curve.pipeline import create_pipeline as learning_curve
from impetus.pipelines.mining.pipeline import create_pipeline as mining
from impetus.pipelines.rerank_eval.pipeline import create_pipeline as rerank_eval
from impetus.pipelines.scorer.pipeline import create_pipeline as scorer
from impetus.testing import tiny_tokenizer

N = 6
H = 16


def _split(prefix: str, n_problems: int, rng: np.random.Generator):
    problems, rows, energies, hidden = [], [], [], []
    for p in range(n_problems):
        pid = f"{prefix}{p:03d}"
        gold = int(rng.integers(10, 99))
        problems.append({"problem_id": pid, "question": f"What is {gold - 3} + 3?", "gold": str(gold)})
        n_right = int(rng.integers(1, N))  # every problem has >=1 right and >=1 wrong candidate
        for s in range(N):
            right = s < n_right if p % 2 else s >= N - n_right  # vary where right ones sit
            answer = str(gold if right else gold + int(rng.integers(1, 9)))
            rows.append({
                "problem_id": pid, "sample_idx": s, "completion": f"The answer is {answer}.",
                "answer": answer, "correct": right, "gen_seconds": 0.5, "n_tokens": 8,
            })
            energies.append({
                "problem_id": pid, "sample_idx": s,
                "spilled_max": float(rng.normal(-1.0 if right else 1.0, 0.5)),
                "marginal_max": float(rng.normal(0.0, 1.0)),
                "answer_span_found": True,
            })
            h = rng.normal(size=H)
            h[0] += 2.0 if right else -2.0
            hidden.append(h)
    hid = {
        "problem_id": np.array([r["problem_id"] for r in rows]),
        "sample_idx": np.array([r["sample_idx"] for r in rows]),
        "hidden_mean": np.array(hidden, dtype=np.float32),
        "hidden_answer": np.array(hidden, dtype=np.float32) * 0.5,
    }
    return pd.DataFrame(problems), pd.DataFrame(rows), pd.DataFrame(energies), hid


@pytest.fixture()
def catalog(tmp_path) -> DataCatalog:
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "lm")
    rng = np.random.default_rng(0)
    p_train, g_train, e_train, h_train = _split("tr", 60, rng)
    p_dev, g_dev, e_dev, h_dev = _split("dv", 20, rng)
    p_eval, g_eval, e_eval, h_eval = _split("ev", 40, rng)
    fast = {"epochs": 8, "lr": 0.003, "weight_decay": 0.0, "batch_groups": 8, "patience": 3, "val_fraction": 0.2}
    timing = {"lm_seconds": 2.0, "embedding_seconds": 1.0}
    data = {
        "graded_train": g_train, "energies_train": e_train, "hidden_train": h_train, "problems_train": p_train,
        "graded_dev": g_dev, "energies_dev": e_dev, "hidden_dev": h_dev, "problems_dev": p_dev,
        "graded_eval": g_eval, "energies_eval": e_eval, "hidden_eval": h_eval, "problems_eval": p_eval,
        "energies_eval_timing": timing, "energies_dev_timing": timing, "energies_train_timing": timing,
        "base_lm": {"path": str(tmp_path / "lm")},
        "params:learning_curve": LearningCurveParams(sizes=[20, 40, 500], methods=["latent_ebm", "hybrid", "majority"],
                                                     seed=0, progress=False, points_dir=str(tmp_path / "points")),
        "params:mining": MiningParams(hard_negative_energy="spilled_max"),
        "params:scorer": ScorerParams.model_validate({
            "seed": 0, "n_seeds": 2, "fold_members": True, "progress": False, "allow_pickle": False,
            "text_ebm": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 64, "dropout": 0.1, "score_dtype": "auto", "train": fast},
            "latent_ebm": {"hidden_source": "mean", "hidden": 32, "n_layers": 2, "dropout": 0.1, "train": fast},
            "hybrid": {"columns": None, "cross_fit_folds": 2, "l2_grid": [0.01, 1.0]},
        }),
        "params:rerank_eval": RerankParams(
            selection="cv", cv_folds=3, shortlist=None, tau_grid=[0.5, 1.0], n_boot=200, acc_vs_n_subsamples=3, weighted_vote=["hybrid", "spilled_max"],
            curves=["first", "majority", "hybrid"], seed=0,
            adaptive={"wave": 2, "thresholds": [0.6, 0.8, 1.0], "max_drop": 0.01, "energy": "hybrid"},
        ),
    }
    return DataCatalog({k: MemoryDataset(v) for k, v in data.items()})


def test_mining_scorer_rerank_slice(catalog):
    pipe = mining() + scorer() + rerank_eval()
    SequentialRunner().run(pipe, catalog)
    result = catalog["rerank_metrics"].load()
    methods = result["methods"]
    assert result["n_problems"] == 40 and result["n_candidates"] == N
    # The signal energy and the learned energies beat chance by far; the noise energy does not.
    assert methods["spilled_max"]["auroc"] > 0.85
    assert methods["latent_ebm"]["auroc"] > 0.85
    assert 0.3 < methods["marginal_max"]["auroc"] < 0.7
    assert methods["hybrid"]["accuracy"] >= methods["first"]["accuracy"]
    assert methods["oracle"]["accuracy"] == 1.0
    # Every CI contains its point estimate; costs are charged (hybrid needs the LM pass + embeddings).
    for m in methods.values():
        assert m["ci"][0] <= m["accuracy"] <= m["ci"][1]
    assert methods["hybrid"]["seconds_per_problem"] >= 2.0 / 40  # its inputs need the LM pass (no embeddings here)
    assert result["sampling_seconds_per_problem"] == pytest.approx(0.5 * N)
    report = catalog["rerank_report"].load()
    assert "| hybrid" in report and "oracle" in report
    assert "Chosen by 3-fold cross-validation over 80 train-side problems" in report and "folds won" in report
    h = result["headline"]
    assert h["method"] in methods and h["accuracy"] == methods[h["method"]]["accuracy"]
    assert (h["selected_on"], h["folds"], h["n_problems"]) == ("cv", 3, 80)  # train 60 + dev 20
    assert set(result["taus"]) == {"hybrid", "spilled_max"}
    cv = result["selection"]["methods"]
    # Out of fold, the learned energies still pick up the signal and the noise energy does not.
    assert cv["latent_ebm"]["accuracy"] > cv["marginal_max"]["accuracy"] + 0.2
    assert cv["hybrid"]["accuracy"] > cv["marginal_max"]["accuracy"] + 0.2
    assert sum(m["fold_wins"] for m in cv.values()) >= 3
    assert result["selection"]["seconds"] > 0 and catalog["metrics_rerank_eval"].load()["selection/folds"]["value"] == 3
    assert methods["spilled_max"]["auroc_within"] > 0.85
    adaptive = result["adaptive"]
    assert set(adaptive) == {"vote_margin", "energy_vote"}  # no DeepConf column in this table
    for r in adaptive.values():
        assert r["threshold"] in (0.6, 0.8, 1.0) and 0.0 <= r["tokens_saved"] < 1.0
    assert "Adaptive N" in catalog["rerank_report"].load()
    adaptive_metric = catalog["metrics_rerank_eval"].load()["adaptive/vote_margin/tokens_saved"]["value"]
    assert adaptive_metric == adaptive["vote_margin"]["tokens_saved"]
    metrics = catalog["metrics_rerank_eval"].load()
    assert metrics["accuracy/majority"]["value"] == pytest.approx(methods["majority"]["accuracy"])
    assert len(catalog["rerank_plots"].load()["accuracy_vs_n.png"].axes) == 1


def test_final_fit_uses_train_and_dev_under_cv_and_train_alone_under_dev(catalog):
    SequentialRunner().run(mining(), catalog)
    ids = set(catalog["ebm_groups"].load()["problem_id"])
    assert {i[:2] for i in ids} == {"tr", "dv"}  # cv: refit on every train-side problem, never eval
    params = catalog["params:rerank_eval"].load().model_copy(update={"selection": "dev"})
    catalog["params:rerank_eval"] = MemoryDataset(params)
    SequentialRunner().run(mining(), catalog)
    assert {i[:2] for i in catalog["ebm_groups"].load()["problem_id"]} == {"tr"}


def test_mining_refuses_dev_problems_in_train_under_dev_selection(catalog):
    params = catalog["params:rerank_eval"].load().model_copy(update={"selection": "dev"})
    catalog["params:rerank_eval"] = MemoryDataset(params)
    leaked = catalog["graded_train"].load().copy()
    leaked.loc[0, "problem_id"] = "dv003"
    catalog["graded_train"] = MemoryDataset(leaked)
    with pytest.raises(LeakageError, match="dv003"):
        SequentialRunner().run(mining(), catalog)


def test_mining_refuses_eval_problems_in_train(catalog):
    leaked = catalog["graded_train"].load().copy()
    leaked.loc[0, "problem_id"] = "ev000"
    catalog["graded_train"] = MemoryDataset(leaked)
    with pytest.raises(LeakageError, match="ev000"):
        SequentialRunner().run(mining(), catalog)


def test_dev_selection_is_still_available(catalog):
    params = catalog["params:rerank_eval"].load().model_copy(update={"selection": "dev"})
    catalog["params:rerank_eval"] = MemoryDataset(params)
    SequentialRunner().run(mining() + scorer() + rerank_eval(), catalog)
    h = catalog["rerank_metrics"].load()["headline"]
    assert (h["selected_on"], h["folds"], h["n_problems"]) == ("dev", None, 20)
    assert "Chosen on dev (20 problems)" in catalog["rerank_report"].load()


def test_the_headline_comes_from_the_shortlist_and_the_table_keeps_every_method(catalog):
    params = catalog["params:rerank_eval"].load().model_copy(update={"shortlist": ["marginal_max", "majority", "absent"]})
    catalog["params:rerank_eval"] = MemoryDataset(params)
    SequentialRunner().run(mining() + scorer() + rerank_eval(), catalog)
    result = catalog["rerank_metrics"].load()
    cv = result["selection"]["methods"]
    # the learned energies carry the signal and lead the table, but are not on the list
    assert max(cv[m]["accuracy"] for m in ("latent_ebm", "hybrid")) > max(cv[m]["accuracy"] for m in ("marginal_max", "majority"))
    # exact ties: more folds won, then cheaper (majority needs no LM pass)
    best = max(("marginal_max", "majority"), key=lambda m: (round(cv[m]["accuracy"], 9), cv[m]["fold_wins"], m == "majority"))
    assert result["headline"]["method"] == best
    assert sorted(result["headline"]["shortlist"]) == ["majority", "marginal_max"]
    report = catalog["rerank_report"].load()
    assert "among the shortlist `rerank_eval.shortlist` (`" in report and "`marginal_max`" in report


def test_cross_validation_refuses_eval_problems_in_train_side_data(catalog):
    # An eval problem slipped into the dev split (train-side under cv) must stop the run.
    leaked = catalog["graded_dev"].load().copy()
    leaked.loc[leaked["problem_id"] == "dv000", "problem_id"] = "ev000"
    catalog["graded_dev"] = MemoryDataset(leaked)
    with pytest.raises(LeakageError, match="ev000"):
        SequentialRunner().run(mining() + scorer() + rerank_eval(), catalog)


def test_ensembles_are_reported_and_the_learning_curve_ends_at_the_run(catalog):
    SequentialRunner().run(mining() + scorer() + rerank_eval(), catalog)
    result = catalog["rerank_metrics"].load()
    ens = result["ensembles"]
    # two seed members (n_seeds: 2) and two fold members (cross_fit_folds: 2)
    assert ens["latent_ebm"]["n_members"] == 4 and set(ens["latent_ebm"]["members"]) == {"seed0", "seed1", "fold0", "fold1"}
    assert ens["latent_ebm"]["ensemble"] == result["methods"]["latent_ebm"]["accuracy"]
    assert ens["latent_ebm"]["member_min"] <= ens["latent_ebm"]["member_mean"] <= ens["latent_ebm"]["member_max"]
    assert "## Learned energies as ensembles" in catalog["rerank_report"].load()
    assert result["latent_features"] == {"source": "mean", "cv": None}  # sampled rows report the states too
    assert "The LatentEBM reads `mean`." in catalog["rerank_report"].load()
    SequentialRunner().run(learning_curve(), catalog)
    points = catalog["learning_curve_metrics"].load()["points"]
    assert [p["n_train_problems"] for p in points] == [20, 40, 80]  # 500 > the 80 there are; 80 = the run
    # The last point refits on every train-side problem with the same seeds: it is the run itself.
    last = points[-1]
    assert (last["chosen"], last["chosen_accuracy"]) == (result["headline"]["method"], result["headline"]["accuracy"])
    assert last["latent_ebm"] == result["methods"]["latent_ebm"]["accuracy"]
    assert [p["sampling_seconds"] for p in points] == [pytest.approx(0.5 * N * n) for n in (20, 40, 80)]
    table = catalog["learning_curve_table"].load()
    assert list(table["n_train_problems"]) == [20, 40, 80]
    assert "learning_curve.png" in catalog["learning_curve_plots"].load()


def test_a_rerun_of_the_learning_curve_reads_its_finished_points(catalog, tmp_path, monkeypatch):
    """Points are kept as they finish: a run killed after the first point refits only the others,
    and a full rerun refits nothing; other settings are other points."""
    import impetus.pipelines.learning_curve.nodes as lc_nodes

    SequentialRunner().run(mining() + scorer() + rerank_eval(), catalog)
    fits = []
    real = lc_nodes.train_scorers

    def counted(*args, **kwargs):
        fits.append(1)
        if len(fits) == 2:
            raise KeyboardInterrupt  # the run dies during its second point
        return real(*args, **kwargs)

    monkeypatch.setattr(lc_nodes, "train_scorers", counted)
    with pytest.raises(KeyboardInterrupt):
        SequentialRunner().run(learning_curve(), catalog)
    assert len(list((tmp_path / "points").glob("*.json"))) == 1 and not list((tmp_path / "points").glob("*.tmp*"))
    monkeypatch.setattr(lc_nodes, "train_scorers", lambda *a, **k: (fits.append(1), real(*a, **k))[1])
    fits.clear()
    SequentialRunner().run(learning_curve(), catalog)
    assert len(fits) == 2  # 40 and 80 refit, 20 read back
    first = catalog["learning_curve_metrics"].load()["points"]
    fits.clear()
    SequentialRunner().run(learning_curve(), catalog)
    assert fits == [] and catalog["learning_curve_metrics"].load()["points"] == first
    params = catalog["params:learning_curve"].load()
    catalog["params:learning_curve"] = MemoryDataset(params.model_copy(update={"seed": 1}))
    SequentialRunner().run(learning_curve(), catalog)
    assert len(fits) == 3  # another permutation: every point is new
