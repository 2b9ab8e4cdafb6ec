"""The ``sampling`` stage pipeline: sample and grade the train and eval splits."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import for_split

from .nodes import grade_split, sample_candidates


def create_pipeline(**kwargs) -> Pipeline:
    nodes = []
    for split in ("train", "eval"):
        nodes += [
            node(
                for_split(sample_candidates, split),
                inputs=[f"problems_{split}", "problems_fewshot", "base_lm", "params:benchmark", "params:sampling"],
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
    return Pipeline(nodes)
