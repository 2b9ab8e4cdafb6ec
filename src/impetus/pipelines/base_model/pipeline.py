"""The ``base_model`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import prepare_base_model


def create_pipeline(**kwargs) -> Pipeline:
    return stage("base_model", [
        node(prepare_base_model, inputs="params:model", outputs=["base_lm", "metrics_base_model"],
             name="prepare_base_model")
    ])
