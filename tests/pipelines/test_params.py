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
    ({"sampling": {"choice_orders": 3}}, r"sampling[\s\S]*must split evenly over sampling.choice_orders = 3"),
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


def test_every_block_is_validated_whatever_pipeline_runs(project):
    """The hook validates blocks no node of the chosen pipeline uses (Kedro alone would not)."""
    from impetus.framework.param_hooks import ParameterError, TypedParamsHook

    with KedroSession.create(project_path=project, env="test", runtime_params={"v2_latent": {"lr": -1}}) as session:
        with pytest.raises(ParameterError, match=r"v2_latent\.lr: Input should be greater than 0 \(got -1\)"):
            session.run(pipeline_names=["ingest"])
    assert not list((project / "data").rglob("*.parquet"))  # ingest never ran
    with KedroSession.create(project_path=project, env="test") as session:
        context = session.load_context()  # valid parameters: the hook lets the context through
    TypedParamsHook().after_context_created(context)


def test_kedro_run_prints_a_parameter_error_last_and_short(project):
    import os
    import subprocess
    import sys
    from pathlib import Path

    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    run = subprocess.run([str(kedro), "run", "-p", "ingest", "--params", "v2_latent.lr=-1"], cwd=project,
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: invalid parameters: v2_latent.lr:") and len(run.stderr.strip().splitlines()) <= 3
    assert "Traceback" not in run.stderr + run.stdout
    assert not list((project / "data").rglob("*.parquet"))
