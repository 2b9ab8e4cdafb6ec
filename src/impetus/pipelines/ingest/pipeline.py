"""The ``ingest`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import ingest_problems


def create_pipeline(**kwargs) -> Pipeline:
    return stage("ingest", [
        node(
            ingest_problems,
            inputs=["params:benchmark", "params:ingest", "params:sampling"],
            outputs=["problems_train", "problems_dev", "problems_eval", "problems_fewshot", "metrics_ingest"],
            name="ingest_problems",
        )
    ])
