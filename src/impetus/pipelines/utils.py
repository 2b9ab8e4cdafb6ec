"""Helpers shared by the stage pipelines."""

from functools import partial, update_wrapper
from typing import Any, Callable, Iterable

from kedro.pipeline import Node, Pipeline

#: Splits that are sampled and scored: train fits the learned energies, dev chooses the headline
#: method and vote temperatures, eval only measures.
SPLITS = ("train", "dev", "eval")


def for_split(func: Callable, split: str) -> Callable:
    """``func`` with ``split=`` fixed, keeping its name, docstring and type hints for kedro-viz and
    Kedro's parameter validation (which reads the hints through ``__wrapped__``).

    The split is a property of the node, not a catalog input, so it is bound here.
    """
    return update_wrapper(partial(func, split=split), func)


def stage(name: str, nodes: Iterable[Node]) -> Pipeline:
    """A stage as a namespaced pipeline: kedro-viz shows it as one collapsible group and
    ``kedro run --namespaces=<name>`` runs it. Dataset names stay global (no prefix), because the
    stages talk through the catalog's shared tables."""
    return Pipeline(list(nodes), namespace=name, prefix_datasets_with_namespace=False)


def load_base_lm(base_lm: dict) -> tuple:
    """``(model, tokenizer)`` of the ``base_lm`` record (:func:`impetus.lm.loading.load_recorded`)."""
    from impetus.lm.loading import load_recorded

    return load_recorded(base_lm)


def load_base_tokenizer(base_lm: dict):
    """The tokenizer of the ``base_lm`` record (no weights loaded)."""
    from impetus.lm.loading import load_tokenizer

    return load_tokenizer(base_lm["path"], trust_remote_code=base_lm.get("trust_remote_code", False))


def sampling_params(sampling: Any, benchmark: Any) -> Any:
    """The sampler's ``SamplingParams`` from the ``sampling`` and ``benchmark`` parameter blocks
    (stop strings default to the benchmark's); shared by every stage that samples."""
    from impetus.lm.sampler import SamplingParams

    stop = sampling.stop if sampling.stop is not None else benchmark.build().stop_strings(sampling.prompt_style)
    return SamplingParams(
        n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens, stop=list(stop), batch_size=sampling.batch_size, seed=sampling.seed,
    )


def dev_runs_cache(folder: str | None, model: Any, *inputs: Any) -> Any:
    """A :class:`~impetus.selection.point_cache.PointCache` for a stage's dev-grid runs under ``folder``
    (None: keeps nothing), keyed by the package's code, the loaded LM's dtype and device (``auto``
    resolves per machine) and ``inputs``: the base LM's record, the dev split's tables, the learned
    energies' records and the stage's settings, everything a dev run reads."""
    from impetus.selection.point_cache import PointCache

    param = next(model.parameters())
    return PointCache.keyed(folder, [[str(param.dtype), str(param.device)], *inputs])
