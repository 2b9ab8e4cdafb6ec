"""Language-model layer: loading (hub id / local dir / GGUF), sampling backends, sharded runner.

Heavy backends (transformers) are imported lazily by ``get_sampler``, so importing this package
stays cheap for code that only needs the data types.
"""

from impetus.lm.loading import load_model, model_id_info, resolve_model
from impetus.lm.runner import SamplingStats, make_run_key, sample_problems, stable_seed
from impetus.lm.sampler import Generation, Sampler, SamplingParams, get_sampler, register_sampler

__all__ = [
    "Generation",
    "Sampler",
    "SamplingParams",
    "SamplingStats",
    "get_sampler",
    "load_model",
    "make_run_key",
    "model_id_info",
    "register_sampler",
    "resolve_model",
    "sample_problems",
    "stable_seed",
]
