"""Every parameter block is validated from the nodes' type hints before the first node runs."""

from __future__ import annotations

import pytest
from kedro.framework.session import KedroSession

BAD = [
    ({"sampling": {"n": 0}}, r"sampling[\s\S]*n[\s\S]*greater than or equal to 1"),
    ({"sampling": {"temperature": -1}}, r"sampling[\s\S]*temperature"),
    ({"sampling": {"top_p": 1.5}}, r"sampling[\s\S]*top_p"),
    ({"sampling": {"max_new_token": 3}}, r"sampling[\s\S]*max_new_token[\s\S]*Extra inputs are not permitted"),
    ({"model": {"device": "cuda"}}, r"model[\s\S]*no CUDA device"),
    ({"benchmark": {"name": "nope"}}, r"benchmark[\s\S]*nope"),
    ({"rerank_eval": {"tau_grid": [0.0]}}, r"rerank_eval[\s\S]*tau must be > 0"),
]


@pytest.mark.parametrize(("runtime", "message"), BAD, ids=[next(iter(r)) + "." + next(iter(next(iter(r.values())))) for r, _ in BAD])
def test_bad_parameters_fail_before_any_node_runs(project, runtime, message):
    if runtime.get("model", {}).get("device") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    with KedroSession.create(project_path=project, env="test", runtime_params=runtime) as session:
        with pytest.raises(Exception, match=message):
            session.run(pipeline_name="v1_rerank")
    # Nothing was written: ingest never ran.
    assert not list((project / "data").rglob("*.parquet"))


def test_switching_benchmark_on_the_command_line_keeps_options_scoped(project):
    with KedroSession.create(project_path=project, env="test",
                             runtime_params={"benchmark": {"name": "svamp", "source": "somewhere"}}) as session:
        params = session.load_context().params
    assert params["benchmark"].benchmark_options() == {}
    assert params["sampling"].n == 4  # the test env's value, as a typed object
