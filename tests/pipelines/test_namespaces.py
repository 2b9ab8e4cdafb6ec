"""Every stage pipeline is namespaced by its own name, so `kedro run -p X --namespaces=X` selects
all of X's nodes and kedro-viz groups a stage under the name a user runs it by."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import pytest

import impetus.pipelines

STAGES = sorted(p.name for p in Path(impetus.pipelines.__file__).parent.iterdir()
                if (p / "pipeline.py").exists() and p.name != "v1_rerank")


def test_every_stage_folder_is_found():
    assert {"ebd", "v2_latent", "ingest", "sampling", "rerank_eval"} <= set(STAGES)


@pytest.mark.parametrize("name", STAGES)
def test_namespace_is_pipeline_name(name):
    pipe = import_module(f"impetus.pipelines.{name}.pipeline").create_pipeline()
    assert pipe.nodes, name
    assert {n.namespace for n in pipe.nodes} == {name}
    assert all(n.name.startswith(f"{name}.") for n in pipe.nodes)
    # what `kedro run -p NAME --namespaces=NAME` keeps: every node of the stage
    assert len(pipe.only_nodes_with_namespaces([name]).nodes) == len(pipe.nodes)


def test_v1_rerank_is_the_stages_in_order():
    from impetus.pipelines.v1_rerank.pipeline import V1_STAGES, create_pipeline

    assert {n.namespace for n in create_pipeline().nodes} == set(V1_STAGES)
