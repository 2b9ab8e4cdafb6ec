"""End-to-end: the V1 pipeline at the test environment's tiny sizes (fewer dev/eval problems) with Gemma-3-270M base as the
model (what ``--env gemma`` changes, given as a runtime parameter as a user would combine it with
another environment). Marked integration; skipped unless ``make setup-gemma`` installed the wheels.
The first run converts the model (about a minute), later runs hit the cache.
"""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession

from impetus.lm.loading import GEMMA3_PACKAGE


@pytest.mark.integration
def test_v1_rerank_runs_on_gemma(project):
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        pytest.skip("Gemma-3-270M wheels not installed: make setup-gemma")
    params = yaml.safe_load((project / "conf" / "gemma" / "parameters.yml").read_text())
    # Fewer dev/eval problems than the test environment: a Gemma decode step costs a few SmolLM2
    # ones (twice the parameters, a 262k-token LM head), and this stays a smoke test. Train keeps
    # its 16 problems: the learned energies' cross-fitting folds need mixed groups in each fold.
    params["ingest"] = {"n_train": 16, "n_dev": 4, "n_eval": 4}
    with KedroSession.create(project_path=project, env="test", runtime_params=params) as session:
        session.run(pipeline_name="v1_rerank")

    base_lm = json.loads((project / "data/06_models/base_lm.json").read_text())
    assert base_lm["name_or_path"] == "gemma3-270m" and base_lm["n_params"] > 2e8
    cands = pd.read_parquet(project / "data/03_primary/candidates_eval.parquet")
    assert len(cands) == 4 * 4
    assert cands["completion"].str.len().gt(0).mean() > 0.5  # a base model continues the few-shot prompt
    assert not cands["completion"].str.contains("\nQ:", regex=False).any()  # cut at the few-shot stop
    report = json.loads((project / "data/08_reporting/rerank_metrics.json").read_text())
    assert report["n_problems"] == 4 and report["n_candidates"] == 4
    assert 0.0 <= report["methods"]["majority"]["accuracy"] <= report["oracle"] <= 1.0


def _parameters(conf, env: str, params: dict | None = None) -> dict:
    """The merged parameters ``kedro run --env <env> --params ...`` sees (project settings)."""
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import settings

    return dict(OmegaConfigLoader(conf_source=str(conf), env=env, runtime_params=params or {},
                                  **settings.CONFIG_LOADER_ARGS)["parameters"])


def test_gemma_env_changes_only_the_model_and_composes_by_params(project):
    from impetus.framework.config import PARAMS, parse

    base, gemma = _parameters(project / "conf", "local"), _parameters(project / "conf", "gemma")
    assert gemma["model"]["name_or_path"] == "gemma3-270m" and base["model"]["name_or_path"] != "gemma3-270m"
    assert gemma["sampling"]["prompt_style"] == "fewshot"  # a base model: no chat template
    assert {k: v for k, v in gemma.items() if k != "model"} == {k: v for k, v in base.items() if k != "model"}
    for name, cls in PARAMS.items():
        parse(cls, gemma[name], name)  # every block still validates
    # another environment with the Gemma model: what `--params model.name_or_path=gemma3-270m` gives
    svamp = _parameters(project / "conf", "svamp", {"model": {"name_or_path": "gemma3-270m"}})
    assert svamp["model"]["name_or_path"] == "gemma3-270m" and svamp["benchmark"]["name"] == "svamp"
    assert svamp["model"]["dtype"] == base["model"]["dtype"]  # merged key by key, not replaced
