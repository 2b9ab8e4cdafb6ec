"""The ``sampling`` stage pipeline: prompts, candidates and grades for every split."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import SPLITS, for_split, stage

from .nodes import choose_adaptive, grade_split, make_prompts, sample_candidates


def create_pipeline(**kwargs) -> Pipeline:
    # Adaptive N online: the eval split's stopping threshold is chosen on the train and dev candidates.
    nodes = [node(choose_adaptive, inputs=["graded_train", "graded_dev", "params:sampling", "params:rerank_eval"],
                  outputs=["adaptive_stop", "metrics_adaptive_online"], name="choose_adaptive")]
    for split in SPLITS:
        nodes += [
            node(
                for_split(make_prompts, split),
                inputs=[f"problems_{split}", "problems_fewshot", "base_lm", "params:benchmark", "params:sampling"],
                outputs=f"prompts_{split}",
                name=f"prompts_{split}",
            ),
            node(
                for_split(sample_candidates, split),
                inputs=[f"prompts_{split}", f"problems_{split}", "base_lm", "params:benchmark", "params:sampling",
                        "params:ray"] + (["adaptive_stop"] if split == "eval" else []),
                outputs=[f"candidates_{split}", f"metrics_sampling_{split}"],
                name=f"sample_{split}",
            ),
            node(
                for_split(grade_split, split),
                inputs=[f"candidates_{split}", f"problems_{split}", "params:benchmark"],
                outputs=[f"graded_{split}", f"metrics_grading_{split}"],
                name=f"grade_{split}",
            ),
        ]
    return stage("sampling", nodes)
