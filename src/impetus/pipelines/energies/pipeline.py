"""The ``energies`` stage pipeline."""

from kedro.pipeline import Pipeline, node

from impetus.pipelines.utils import SPLITS, for_split, stage

from .nodes import compute_energies


def create_pipeline(**kwargs) -> Pipeline:
    return stage("energies", [
        node(
            for_split(compute_energies, split),
            inputs=[f"graded_{split}", f"prompts_{split}", "base_lm", "params:energies"],
            outputs=[f"energies_{split}", f"hidden_{split}", f"energies_{split}_timing", f"metrics_energies_{split}"],
            name=f"energies_{split}",
        )
        for split in SPLITS
    ])
