"""The v2_latent and ebd stages through SequentialRunner on a tiny random Llama and tiny learned energies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from impetus.benchmarks.grading import grade_candidates
from impetus.framework.config import (BenchmarkParams, ComputeMatchParams, EBDParams, EnergyStageParams, LatentParams,
                                     SamplingStageParams)
from impetus.energy.recorded import recorded_energies
from impetus.learned.fitting import LearnedScorers
from impetus.learned.hybrid import HybridConfig, HybridEnergy
from impetus.learned.models import LatentEBM, LatentEBMConfig, TextEBM, TextEBMConfig
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.runner import sample_problems
from impetus.lm.sampler import SamplingParams
from impetus.pipelines.compute_match.pipeline import create_pipeline as compute_match_pipeline
from impetus.pipelines.ebd.pipeline import create_pipeline as ebd_pipeline
from impetus.pipelines.v2_latent.pipeline import create_pipeline
from impetus.testing import tiny_llama, tiny_tokenizer

N = 4
SAMPLING = dict(backend="hf", executor="local", prompt_style="fewshot", n=N, temperature=1.0, top_p=0.95, max_new_tokens=6, stop=["\n"],
                batch_size=8, shard_size=4, seed=0, shard_dir="unused", progress=False, record=True, choice_orders=1,
                candidates="sampled", choice_shots=0, reuse_dir=None, adaptive="off")


@pytest.fixture()
def catalog(tmp_path) -> DataCatalog:
    torch.manual_seed(0)
    tok, model = tiny_tokenizer(), tiny_llama()
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    problems = pd.DataFrame({"problem_id": [f"p{i}" for i in range(3)], "question": [f"{i} + 1" for i in range(3)],
                             "gold": [str(i + 1) for i in range(3)], "choices": None, "meta": "{}"})
    prompts = problems.assign(prompt=[f"Q: {q}?\nA:" for q in problems["question"]])[["problem_id", "prompt"]]
    params = SamplingParams(n=N, temperature=1.0, top_p=0.95, max_new_tokens=6, stop=["\n"], batch_size=8, seed=0)
    bench = BenchmarkParams(name="arith", source="generated", options={"arith": {"n_problems": 10}}).build()
    cands, _ = sample_problems(HFSampler(model, tok), prompts, params, tmp_path / "shards", progress=False,
                               answer_span=lambda pid, t: (lambda f: (f[1], f[2]) if f else None)(bench.extract_span(t)))
    graded = grade_candidates(bench, cands, problems)
    energies, hidden = recorded_energies(graded)
    energies["answer_agreement"] = 0.0
    energies["embedding_consistency"] = 0.0
    rng = np.random.default_rng(0)
    fit_df = pd.DataFrame({"problem_id": np.repeat(np.arange(6), 2), "correct": np.tile([True, False], 6),
                           "neg_logprob_mean": rng.normal(size=12), "latent_ebm": rng.normal(size=12)})
    scorers = LearnedScorers(
        text_ebm=TextEBM(TextEBMConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64, dropout=0.1)),
        latent_ebm=LatentEBM(LatentEBMConfig(input_dim=128, hidden=8, n_layers=1, dropout=0.1)), hidden_source="both",
        hybrid=HybridEnergy(HybridConfig(l2=0.1)).fit(fit_df, ["neg_logprob_mean", "latent_ebm"]),
    ).to_records()
    selections = pd.DataFrame({"problem_id": problems["problem_id"], "first": 0, "hybrid": 1})
    data = {
        "problems_eval": problems, "prompts_eval": prompts, "graded_eval": graded, "energies_eval": energies,
        "hidden_eval": hidden, "rerank_selections": selections,
        # the dev split: the same three problems (a tiny grid runs on them)
        "problems_dev": problems, "prompts_dev": prompts, "graded_dev": graded, "energies_dev": energies,
        "hidden_dev": hidden,
        "rerank_metrics": {"headline": {"method": "hybrid"}, "taus": {"hybrid": 1.0}},
        "base_lm": {"path": str(tmp_path / "lm"), "device": "cpu", "dtype": "float32"},
        "text_ebm": scorers["text_ebm"], "latent_ebm": scorers["latent_ebm"], "hybrid_energy": scorers["hybrid"],
        "params:benchmark": BenchmarkParams(name="arith", source="generated", options={"arith": {"n_problems": 10}}),
        "params:sampling": SamplingStageParams(**SAMPLING),
        "params:energies": EnergyStageParams(logit_source="auto", batch_size=4, hidden_states=True, embedding_model=None,
                                             embedding_batch_size=8, embedding_dtype="float32", progress=False),
        "params:v2_latent": LatentParams(
            n_problems=2, energy="hybrid", starts=["single", "v1"], modes=["reinforce", "gradient", "latentseek", "topk_pg"],
            positions="spilled", prefix_fraction=0.3, window=2, steps=2, lr=0.5, samples=2, radius=0.5, patience=None,
            grid={"positions": ["spilled", "prefix"]}, search="product", dev_problems=2, mode_settings={"latentseek": {"lr": 0.05}}, ceiling_k=3, compare_to=["majority", "headline"], n_boot=100,
            seed=0, progress=False, dev_runs_dir=str(tmp_path / "v2_dev_runs"),
        ),
        "params:ebd": EBDParams(n_problems=2, energy="hybrid", tau=1.0, alpha=2.0, block=2, chains=2, n_init=2, steps=3, answer="lowest", kernel="resample",
                                grid={"steps": [1, 3], "tau": [1.0, 0.5]}, search="coordinate", dev_problems=2,
                                n_boot=100, seed=0, progress=False, dev_runs_dir=str(tmp_path / "ebd_dev_runs")),
        "params:compute_match": ComputeMatchParams(budgets=[1, 4, 1000], v1_methods=["headline", "majority"],
                                                   vote_for=["hybrid"], rule="best_dev", n_boot=100, seed=0),
    }
    return DataCatalog({k: MemoryDataset(v) for k, v in data.items()})


def test_latent_eval_slice(catalog):
    SequentialRunner().run(create_pipeline(), catalog)
    result = catalog["v2_metrics"].load()
    methods = result["methods"]
    assert result["n_problems"] == 2
    assert {"v2_reinforce_single", "v2_reinforce_v1", "v2_gradient_single", "v2_gradient_v1", "majority", "hybrid"} <= set(methods)
    for name, m in methods.items():
        assert m["family"] in ("v1", "v2", "v2_control") and 0.0 <= m["accuracy"] <= 1.0 and m["tokens_per_problem"] > 0
        if m["family"] == "v2" and not any(k in name for k in ("latentseek", "topk_pg")):
            assert m["energy_after"] <= m["energy_before"] + 1e-9  # the best answer visited, start included
            assert m["energy_after"] <= methods[f"{name}_control"]["energy_after"] + 1e-9  # step 0 of the same run
        if m["family"] == "v2":
            control = methods[f"{name}_control"]
            assert m["control_accuracy"] == control["accuracy"] and 0.0 <= m["changed_share"] <= 1.0
            assert f"{name} vs {name}_control" in result["comparisons"]
    assert result["chosen_on"] == "dev" and len(result["grid_dev_accuracy"]["reinforce"]) == 2
    assert result["settings"]["gradient"]["positions"] in ("spilled", "prefix")
    # A V2 answer from the V1 choice costs all N candidates' tokens plus its own.
    assert methods["v2_reinforce_v1"]["tokens_per_problem"] > methods["hybrid"]["tokens_per_problem"]
    assert any(" vs " in k for k in result["comparisons"])
    ceiling = result["ceiling"]
    for split in ("dev", "eval"):  # 2 answers each: 3 tokens at each of up to 3 positions
        c = ceiling[split]
        assert c["n_answers"] == 2 and 0 < c["alternatives"] <= 2 * 3 * 3 and 0.0 <= c["oracle_headroom"] <= 1.0
        assert c["oracle_accuracy"] >= c["control_accuracy"]
    assert "V2's ceiling" in catalog["v2_report"].load()
    answers = catalog["v2_answers"].load()
    assert len(answers) == 2 * 8 * 2 and set(answers["method"]) >= {"v2_reinforce_single", "v2_reinforce_single_control"}
    dev = catalog["v2_dev_answers"].load()  # every mode's chosen settings on the dev problems, from the first sample
    assert set(dev["method"]) == {m for m in answers["method"] if "_single" in m} and dev["tokens"].gt(0).all()
    assert "V2: latent optimisation" in catalog["v2_report"].load()
    assert set(catalog["v2_plots"].load()) == {"v2_accuracy_vs_step.png", "v2_accuracy_vs_tokens.png",
                                               "v2_energy_before_after.png"}
    assert catalog["metrics_v2_latent"].load()["v2/accuracy/majority"]["value"] == methods["majority"]["accuracy"]


def test_ebd_slice(catalog, monkeypatch):
    import impetus.latent.scoring as scoring

    embedded = []  # the hybrid here has no embedding input, so no chain state is embedded
    monkeypatch.setattr(scoring, "embed_texts", lambda texts, *a, **k: embedded.append(texts))
    SequentialRunner().run(ebd_pipeline(), catalog)
    assert embedded == []
    result = catalog["ebd_metrics"].load()
    methods = result["methods"]
    assert result["n_problems"] == 2 and result["steps"] in (1, 3)
    assert {"ebd_lowest", "ebd_vote"} <= set(methods)
    for name in ("ebd_lowest", "ebd_vote"):
        m = methods[name]
        assert m["family"] == "ebd" and 0.0 <= m["acceptance"] <= 1.0
    assert result["chosen_on"] == "dev" and result["settings"]["alpha"] == 2.0 and result["settings"]["tau"] in (1.0, 0.5)
    # coordinate search, steps first: both step counts read off one 3-step run, then tau at the chosen steps
    steps = result["steps"]
    assert [p["settings"] for p in result["grid_dev_accuracy"]] == [{"steps": 1, "tau": 1.0}, {"steps": 3, "tau": 1.0},
                                                                    {"steps": steps, "tau": 0.5}]
    assert "coordinate search over steps [1, 3]; tau [1.0, 0.5]" in catalog["ebd_report"].load()
    acc = [p["dev_acceptance"] for p in result["grid_dev_accuracy"]]
    assert all(0.0 <= p["dev_changed_proposals"] <= 1.0 for p in result["grid_dev_accuracy"])
    assert acc[0] == acc[1] and all(0.0 <= a <= 1.0 for a in acc)  # steps 1 and 3: one run, one acceptance
    # Two chains start from the best of two candidates each (all four), then every step proposes new tokens.
    answers = catalog["ebd_answers"].load()
    graded = catalog["graded_eval"].load()
    start_tokens = graded[graded.sample_idx < 4].groupby("problem_id")["n_tokens"].sum()
    assert (answers.set_index("problem_id")["tokens"] >= start_tokens.reindex(answers["problem_id"]).to_numpy()).all()
    assert any(k.startswith("ebd_lowest vs hybrid@") for k in result["comparisons"])  # best-of-N, same energy
    assert set(pd.DataFrame(result["ebd_curve"])["step"]) == set(range(steps + 1))
    assert "EBD" in catalog["ebd_report"].load()
    assert result["reuse_cache"] is True and "continue each chain's KV cache" in catalog["ebd_report"].load()
    assert set(catalog["ebd_plots"].load()) == {"ebd_accuracy_vs_tokens.png"}
    assert len(answers) == 2 * 2 and answers["tokens"].gt(0).all()
    # every rejected proposal differed from the chain's answer; the rest were accepted
    assert (answers["acceptance"] - (1 - answers["rejections"] / answers["proposals"])).abs().max() < 1e-12
    assert answers["proposals"].eq(2 * steps).all() and (answers["moves"] + answers["rejections"]).le(2 * steps).all()
    assert 0.0 <= methods["ebd_lowest"]["changed_proposals"] <= 1.0


def test_ebd_and_v2_nodes_keep_their_dev_runs_and_a_rerun_reads_them(catalog, tmp_path):
    """Each dev-grid run is kept under ``dev_runs_dir`` as it finishes; rerunning the stage reads
    every one back (the files are not rewritten) and chooses the same settings from the same scores."""
    for pipeline, name, folder in ((ebd_pipeline(), "ebd_metrics", "ebd_dev_runs"),
                                   (create_pipeline(), "v2_metrics", "v2_dev_runs")):
        SequentialRunner().run(pipeline, catalog)
        first = catalog[name].load()
        kept = {p: p.stat().st_mtime_ns for p in (tmp_path / folder).glob("*.json")}
        SequentialRunner().run(pipeline, catalog)
        again = catalog[name].load()
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / folder).glob("*.json")} == kept
        assert again["grid_dev_accuracy"] == first["grid_dev_accuracy"] and again["settings"] == first["settings"]
        # EBD: one 3-step run at tau 1.0 (both step counts) and one at tau 0.5; V2: 2 positions x 4 modes
        assert len(kept) == {"ebd_metrics": 2, "v2_metrics": 8}[name]


def test_compute_match_after_ebd_and_v2(catalog):
    """V1 at each n, EBD per step and V2 on the eval problems all three share; per budget the dev choice."""
    for pipeline in (ebd_pipeline(), create_pipeline(), compute_match_pipeline()):
        SequentialRunner().run(pipeline, catalog)
    steps = catalog["ebd_steps"].load()
    assert set(steps["split"]) == {"eval", "dev"} and set(steps["method"]) == {"ebd_lowest", "ebd_vote"}
    result = catalog["compute_match_metrics"].load()
    assert result["eval_problems"] == 2 and result["not_choosable"] == []  # EBD 2, V2 2, V1 3 eval problems
    families = {o["family"] for o in result["options"]}
    # V2 is measured on dev from the first sample (its grid's dev run), not from the V1 choice
    v2_dev = {o["name"]: o["dev_accuracy"] for o in result["options"] if o["family"] == "v2"}
    assert v2_dev["v2_reinforce_v1"] is None and v2_dev["v2_reinforce_single"] is not None
    assert families == {"v1", "ebd", "v2"}
    assert {o["name"] for o in result["options"] if o["family"] == "v1"} == {f"{m}@{n}" for m in ("hybrid", "majority")
                                                                             for n in range(1, N + 1)}
    big = result["budgets"][-1]  # everything fits: the best dev accuracy wins
    dev_best = max(o["dev_accuracy"] for o in result["options"] if o["dev_accuracy"] is not None)
    assert big["chosen"]["dev_accuracy"] == dev_best and big["v1_headline"]["name"] == f"hybrid@{N}"
    assert big["vs_headline"]["mean_diff"] == pytest.approx(big["chosen"]["eval_accuracy"]
                                                            - big["v1_headline"]["eval_accuracy"])
    assert result["budgets"][0]["chosen"]["dev_tokens"] <= result["budgets"][0]["budget_tokens"]
    assert "One compute-matched choice" in catalog["compute_match_report"].load()
    assert set(catalog["compute_match_plots"].load()) == {"compute_match_accuracy_vs_tokens.png"}
