"""The ``mining`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import mine_ebm_groups


def create_pipeline(**kwargs) -> Pipeline:
    return stage("mining", [
        node(
            mine_ebm_groups,
            inputs=["graded_train", "energies_train", "hidden_train", "problems_dev", "problems_eval", "params:mining"],
            outputs=["ebm_groups", "metrics_mining"],
            name="mine_ebm_groups",
        )
    ])
