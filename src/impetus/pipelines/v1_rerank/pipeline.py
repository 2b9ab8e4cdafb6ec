"""``v1_rerank``: the whole V1 experiment, ingest to report, as one pipeline.

A folder of its own (rather than a sum built in the registry) because Kedro 1.7 imports only the
pipeline folders a command asks for: ``kedro run -p v1_rerank`` must find a module by that name.
"""

from importlib import import_module

from kedro.pipeline import Pipeline

# Stage order of the V1 reranking experiment; each stage is also runnable alone (`kedro run -p <stage>`).
V1_STAGES = ("ingest", "base_model", "sampling", "energies", "mining", "scorer", "rerank_eval")


def create_pipeline(**kwargs) -> Pipeline:
    stages = [import_module(f"impetus.pipelines.{name}.pipeline").create_pipeline() for name in V1_STAGES]
    return sum(stages, Pipeline([]))
