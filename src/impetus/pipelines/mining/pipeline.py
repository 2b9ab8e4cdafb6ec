"""The ``mining`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import mine_ebm_groups


def create_pipeline(**kwargs) -> Pipeline:
    return stage("mining", [
        node(
            mine_ebm_groups,
            inputs=["graded_train", "energies_train", "hidden_train", "graded_dev", "energies_dev", "hidden_dev",
                    "problems_dev", "problems_eval", "params:mining", "params:rerank_eval"],
            outputs=["ebm_groups", "metrics_mining"],
            name="mine_ebm_groups",
        )
    ])
