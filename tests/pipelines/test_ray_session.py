"""``kedro run -p v1_rerank --env test --params "sampling.executor=ray"`` samples what ``local`` does.

The sampling stage runs up to ``candidates_eval`` twice in one scratch project, once per executor
(each with its own shard folder, so nothing is reused across them); the ray run starts its own
local Ray, as on a laptop, and tags its MLflow run with the Ray job.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from kedro.framework.session import KedroSession

from impetus.energy.recorded import RECORD_COLUMNS

pytest.importorskip("ray")


def sample_eval(project, executor: str) -> pd.DataFrame:
    params = {"sampling": {"executor": executor, "shard_dir": f"data/03_primary/shards_{executor}"},
              "ray": {"dashboard": False}}
    with KedroSession.create(project_path=project, env="test", runtime_params=params) as session:
        session.run(pipeline_name="v1_rerank", to_nodes=["sampling.sample_eval"])
    return pd.read_parquet(project / "data/03_primary/candidates_eval.parquet")


@pytest.mark.integration
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_executor_samples_the_local_candidates(project):
    from impetus.pipelines.sampling.nodes import close_executors

    local = sample_eval(project, "local")
    try:
        on_ray = sample_eval(project, "ray")
    finally:
        close_executors()
    assert len(on_ray) == len(local) == 8 * 4
    exact = ["problem_id", "sample_idx", "completion", "n_tokens", "finish_reason", "seed"]
    pd.testing.assert_frame_equal(on_ray[exact], local[exact])
    for col in ["logprob_mean", *RECORD_COLUMNS]:  # recorded floats: equal up to rounding
        for a, b in zip(on_ray[col], local[col]):
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-4)
    db = sqlite3.connect(project / "mlruns" / "mlflow.db")
    tags = db.execute("select t.key, t.value from tags t join runs r on t.run_uuid = r.run_uuid "
                      "where t.key like 'ray.%'").fetchall()
    assert dict(tags)["ray.nodes"] == "1" and dict(tags)["ray.job_id"]
