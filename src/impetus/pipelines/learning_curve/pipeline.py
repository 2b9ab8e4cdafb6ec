"""The ``learning_curve`` stage pipeline: runs after ``v1_rerank`` on what it persisted."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import learning_curve


def create_pipeline(**kwargs) -> Pipeline:
    return stage("learning_curve", [
        node(
            learning_curve,
            inputs=[
                "graded_train", "energies_train", "hidden_train", "energies_train_timing", "problems_train",
                "graded_dev", "energies_dev", "hidden_dev", "energies_dev_timing", "problems_dev",
                "graded_eval", "energies_eval", "hidden_eval", "energies_eval_timing", "problems_eval",
                "base_lm", "params:mining", "params:scorer", "params:rerank_eval", "params:learning_curve",
            ],
            outputs=["learning_curve_metrics", "learning_curve_table", "learning_curve_plots", "metrics_learning_curve"],
            name="learning_curve",
        )
    ])
