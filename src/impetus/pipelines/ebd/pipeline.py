"""``ebd``: energy-based decoding on what ``v1_rerank`` persisted, against best-of-N and V1."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import run_chains


def create_pipeline(**kwargs) -> Pipeline:
    return stage("ebd", [
        node(
            run_chains,
            inputs=[
                "problems_eval", "prompts_eval", "graded_eval", "energies_eval", "hidden_eval", "problems_dev",
                "prompts_dev", "graded_dev", "energies_dev", "hidden_dev", "rerank_metrics",
                "base_lm", "text_ebm", "latent_ebm", "hybrid_energy", "params:benchmark", "params:sampling",
                "params:energies", "params:ebd",
            ],
            outputs=["ebd_metrics", "ebd_report", "ebd_answers", "ebd_steps", "ebd_plots", "metrics_ebd"],
            name="run_chains",
        )
    ])
