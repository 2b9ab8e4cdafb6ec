"""The ``scorer`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import train_scorers


def create_pipeline(**kwargs) -> Pipeline:
    return stage("scorer", [
        node(
            train_scorers,
            inputs=["ebm_groups", "problems_train", "hidden_train", "problems_dev", "hidden_dev", "base_lm",
                    "params:scorer", "params:rerank_eval"],
            outputs=["text_ebm", "latent_ebm", "hybrid_energy", "text_ebm_mlflow", "latent_ebm_mlflow", "metrics_scorer"],
            name="train_scorers",
        )
    ])
