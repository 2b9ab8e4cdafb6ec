"""Language-model layer: loading (hub id / local dir / GGUF), sampling backends, sharded runner.

Backends are looked up lazily by ``get_sampler`` (a table of import paths in
``impetus.lm.sampler``), so importing this package never imports a backend such as the
transformers-based ``hf`` sampler.
"""

from impetus.lm.loading import load_model, load_tokenizer, model_id_info, resolve_model
from impetus.lm.runner import (
    IncompleteCandidatesError,
    SamplingStats,
    check_complete,
    make_run_key,
    sample_problems,
    stable_seed,
)
from impetus.lm.sampler import (
    Generation,
    Sampler,
    SamplingParams,
    get_sampler,
    known_samplers,
    register_sampler,
)

__all__ = [
    "Generation",
    "IncompleteCandidatesError",
    "Sampler",
    "SamplingParams",
    "SamplingStats",
    "check_complete",
    "get_sampler",
    "known_samplers",
    "load_model",
    "load_tokenizer",
    "make_run_key",
    "model_id_info",
    "register_sampler",
    "resolve_model",
    "sample_problems",
    "stable_seed",
]
