"""The ``rerank_eval`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import rerank_and_evaluate


def create_pipeline(**kwargs) -> Pipeline:
    return stage("rerank_eval", [
        node(
            rerank_and_evaluate,
            inputs=[
                "graded_train", "energies_train", "hidden_train", "energies_train_timing", "problems_train",
                "graded_dev", "energies_dev", "hidden_dev", "energies_dev_timing", "problems_dev",
                "graded_eval", "energies_eval", "hidden_eval", "energies_eval_timing", "problems_eval",
                "base_lm", "text_ebm", "latent_ebm", "hybrid_energy", "params:scorer", "params:rerank_eval",
            ],
            outputs=["rerank_metrics", "rerank_report", "rerank_selections", "accuracy_vs_n", "rerank_plots",
                     "metrics_rerank_eval"],
            name="rerank_and_evaluate",
        )
    ])
