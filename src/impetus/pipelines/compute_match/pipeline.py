"""``compute_match``: one compute-matched choice among V1, V2 and EBD, after ``v1_rerank``, ``ebd``
and ``v2_latent`` have run on the same testbed."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import stage

from .nodes import choose_family


def create_pipeline(**kwargs) -> Pipeline:
    return stage("compute_match", [
        node(
            choose_family,
            inputs=["problems_eval", "graded_eval", "energies_eval", "hidden_eval", "problems_dev", "graded_dev",
                    "energies_dev", "hidden_dev", "rerank_metrics", "base_lm", "text_ebm", "latent_ebm",
                    "hybrid_energy", "ebd_steps", "v2_answers", "v2_dev_answers", "params:compute_match"],
            outputs=["compute_match_metrics", "compute_match_report", "compute_match_plots", "metrics_compute_match"],
            name="choose_family",
        )
    ])
