"""End-to-end: `kedro run --pipeline=v1_rerank --env test` on the real SmolLM2, then MLflow checks.

The project's conf/ is copied into a temporary project so the run never touches the repo's data/
or mlruns/. Marked integration: it converts/loads the real model (cached after the first run).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession

@pytest.mark.integration
def test_v1_rerank_session_logs_an_mlflow_run(project):
    with KedroSession.create(project_path=project, env="test") as session:
        session.run(pipeline_name="v1_rerank")

    problems_eval = pd.read_parquet(project / "data/02_intermediate/problems_eval.parquet")
    problems_train = pd.read_parquet(project / "data/02_intermediate/problems_train.parquet")
    assert len(problems_eval) == 8 and len(problems_train) == 16
    assert not set(problems_eval.problem_id) & set(problems_train.problem_id)
    cands = pd.read_parquet(project / "data/03_primary/candidates_eval.parquet")
    assert len(cands) == 8 * 4
    energies = pd.read_parquet(project / "data/04_feature/energies_eval.parquet")
    assert {"spilled_max", "marginal_max", "neg_logprob_mean", "embedding_consistency"} <= set(energies.columns)
    report = json.loads((project / "data/08_reporting/rerank_metrics.json").read_text())
    assert report["n_problems"] == 8 and report["n_candidates"] == 4
    assert 0.0 <= report["methods"]["majority"]["accuracy"] <= report["oracle"] <= 1.0

    db = sqlite3.connect(project / "mlruns" / "mlflow.db")
    runs = db.execute("select run_uuid, status from runs").fetchall()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    run_id = runs[0][0]
    params = dict(db.execute("select key, value from params where run_uuid=?", (run_id,)).fetchall())
    assert params["benchmark.name"] == "arith" and params["ingest.n_eval"] == "8"
    metrics = dict(db.execute("select key, value from latest_metrics where run_uuid=?", (run_id,)).fetchall())
    assert metrics["ingest/n_eval"] == 8 and metrics["ingest/n_train"] == 16
    assert metrics["accuracy/majority"] == pytest.approx(report["methods"]["majority"]["accuracy"])
    assert "sampling/eval/tokens_per_s" in metrics
