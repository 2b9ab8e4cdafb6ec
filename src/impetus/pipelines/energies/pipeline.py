"""The ``energies`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import for_split

from .nodes import compute_energies


def create_pipeline(**kwargs) -> Pipeline:
    nodes = []
    for split in ("train", "eval"):
        nodes.append(
            node(
                for_split(compute_energies, split),
                inputs=[
                    f"graded_{split}", f"problems_{split}", "problems_fewshot", "base_lm",
                    "params:benchmark", "params:sampling", "params:energies",
                ],
                outputs=[f"energies_{split}", f"hidden_{split}", f"energies_{split}_timing", f"metrics_energies_{split}"],
                name=f"energies_{split}",
            )
        )
    return Pipeline(nodes)
