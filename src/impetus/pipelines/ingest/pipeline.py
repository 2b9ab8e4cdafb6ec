"""The ``ingest`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from .nodes import ingest_problems


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                ingest_problems,
                inputs=["params:benchmark", "params:ingest"],
                outputs=["problems_train", "problems_eval", "problems_fewshot", "metrics_ingest"],
                name="ingest_problems",
            )
        ]
    )
