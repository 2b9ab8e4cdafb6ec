"""The ``mining`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from .nodes import mine_ebm_groups


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                mine_ebm_groups,
                inputs=["graded_train", "energies_train", "hidden_train", "problems_eval", "params:mining"],
                outputs=["ebm_groups", "metrics_mining"],
                name="mine_ebm_groups",
            )
        ]
    )
