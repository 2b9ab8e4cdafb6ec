"""``v2_latent``: latent optimisation (V2) on what ``v1_rerank`` persisted, judged against V1."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import optimize_latents


def create_pipeline(**kwargs) -> Pipeline:
    return stage("v2_latent", [
        node(
            optimize_latents,
            inputs=[
                "problems_eval", "prompts_eval", "graded_eval", "energies_eval", "hidden_eval", "problems_dev", "prompts_dev",
                "graded_dev", "energies_dev", "hidden_dev", "rerank_selections",
                "rerank_metrics", "base_lm", "text_ebm", "latent_ebm", "hybrid_energy", "params:benchmark",
                "params:sampling", "params:energies", "params:v2_latent",
            ],
            outputs=["v2_metrics", "v2_report", "v2_answers", "v2_dev_answers", "v2_plots", "metrics_v2_latent"],
            name="optimize_latents",
        )
    ])
