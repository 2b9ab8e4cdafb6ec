"""Sampler interface, sampling parameters and results, and a backend registry.

Callers (the runner, Kedro nodes, notebooks) only see ``SamplingParams``, ``Generation`` and the
protocols below, and obtain a backend with ``get_sampler(name, model, tokenizer)``:

- :class:`Sampler` generates ``n`` rows per prompt with per-row seeds (the runner, V1);
- :class:`ContinuingSampler` also continues rows from a kept cache with per-row caps and encodes
  given answers into continuable :class:`impetus.lm.trace.Trace` s (EBD's proposals);
- :class:`LatentSampler` also decodes given last-layer states to logits, differentiably (V2's
  latent optimisation);
- :class:`ParticleSampler` also grows and resamples particles in one decoding loop (Power-SMC;
  optional: EBD falls back to ``continue_rows``).

EBD and V2 (``impetus.decoding``, ``impetus.latent``) use these protocols only, never a backend
class, so a new backend serves them by implementing the methods below.

A backend factory takes ``(model, tokenizer, record=..., hidden_layers=...)``. With ``record``, each
``Generation.record`` holds the keys of :data:`impetus.energy.recorded.RECORD_KEYS` (raw-logit
statistics, pooled last-layer states) and, per further layer ``k`` of ``hidden_layers`` (HF
``hidden_states`` indices, resolved by :func:`impetus.lm.hf_choices.resolve_layers`), ``hidden_l<k>``:
the mean of layer k's states over the row's tokens. Continued rows (``continue_rows``) also keep
every token's states: ``states`` (last layer) and ``states_l<k>`` (``[T, H]`` each), and encoded
traces carry them as ``Trace.layer_states`` (issue 25: the learned energies may read those layers).

Backends are found through a lazy table of import paths (``"hf"`` ->
``"impetus.lm.hf_sampler:HFSampler"``): this module never imports a backend, and no backend
imports anything back from a registry, so there is no import cycle and a backend's heavy
dependencies (transformers, vLLM) load only when it is asked for. Third-party backends call
``register_sampler(name, factory_or_import_path)`` (or use it as a decorator).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence, Union, runtime_checkable

if TYPE_CHECKING:
    import torch

    from impetus.lm.trace import Trace

FinishReason = Literal["stop", "eos", "length", "choice"]
ProgressFn = Callable[[int, int], None]
"""``progress(new_tokens, finished_rows)``, called after every decoding step."""
Prompt = Union[str, Sequence[int]]
"""A prompt as text, or as token ids (e.g. a prompt followed by an answer's kept prefix)."""


@dataclass(kw_only=True)
class SamplingParams:
    """How to sample candidates (keyword arguments only).

    n: candidates per prompt. temperature: 0 means greedy (argmax). top_p: nucleus mass in (0, 1].
    max_new_tokens: hard cap per completion. stop: strings that end a completion (the stop string
    itself is cut off). batch_size: rows (prompt x sample) decoded together in one forward pass.
    seed: base seed; per-prompt seeds are usually derived from it and the problem id by the runner.

    ``n``, ``temperature``, ``top_p`` and ``max_new_tokens`` have no defaults on purpose: their
    defaults live in ``conf/base/parameters_sampling.yml`` only, so a caller can never silently get
    a second, different set. The remaining defaults are neutral (no stop strings; ``batch_size``
    does not change results) and a test keeps ``batch_size``/``seed`` equal to the YAML ones.
    """

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone string is a common YAML slip; accept it
            self.stop = [self.stop]
        self.stop = [str(s) for s in self.stop]
        if int(self.n) < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if not (0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not math.isfinite(float(self.temperature)) or float(self.temperature) < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if int(self.batch_size) < 1:
            raise ValueError(f"SamplingParams.batch_size must be >= 1, got {self.batch_size}")
        if any(s == "" for s in self.stop):
            raise ValueError("SamplingParams.stop must not contain empty strings")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for logging as run params and hashing)."""
        return asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The fields that can change the generated text. ``batch_size`` is left out on purpose:
        results do not depend on it (up to float rounding), so changing it must not void a cache."""
        d = self.to_dict()
        d.pop("batch_size")
        return d

    def digest(self) -> str:
        """Short stable hash of ``result_dict()``."""
        blob = json.dumps(self.result_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Generation:
    """One sampled completion.

    text: the completion, cut before the first stop string (EOS not included).
    token_ids: the kept completion tokens: those whose text lies wholly before the stop string
        (a token that straddles the stop string is dropped), EOS excluded.
    n_tokens: ``len(token_ids)``.
    finish_reason: "stop" (a stop string), "eos" (the model's EOS token) or "length".
    logprob_mean: mean log-probability of ``token_ids`` under the *unmodified* model distribution
        (softmax of the raw logits at temperature 1, no top-p truncation), i.e. the model's own
        likelihood rather than the tempered proposal's. NaN when no token was kept.
    seconds: wall time attributed to this row: each forward pass's time split equally over the
        rows in that pass (prefill over the rows it serves), so rows' seconds add up to the total.
    sample_idx: which sample of its prompt this is (its seed is ``row_seed(prompt_seed, sample_idx)``).
    record: what the sampler recorded while decoding (``impetus.lm.recording``): per-token
        ``lse`` (T + 1), ``tok_logit``, ``deepconf`` (T) and pooled ``hidden_mean``,
        ``hidden_answer``; None when the backend does not record.
    """

    text: str
    token_ids: list[int]
    n_tokens: int
    finish_reason: FinishReason
    logprob_mean: float
    seconds: float
    sample_idx: int = 0
    record: dict[str, Any] | None = None
    past: Any = None  # the backend's cache of prompt + tokens (``ContinuingSampler.continue_rows(keep_past=)``)


@runtime_checkable
class Sampler(Protocol):
    """A sampling backend."""

    name: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        seeds: list[int],
        progress: ProgressFn | None = None,
        first_sample: int = 0,
        answer_span: Callable[[int, str], tuple[int, int] | None] | None = None,
    ) -> list[list[Generation]]:
        """Return ``params.n`` generations for each prompt, in order. ``seeds[i]`` seeds prompt i:
        the same (prompt, params, seed) must give the same generations whatever else is batched.
        Samples are ``first_sample .. first_sample + n - 1`` (so waves are prefixes of one big call);
        ``answer_span(prompt_index, text)`` locates the answer for the recorded answer state.
        A prompt may be given as token ids."""
        ...


@runtime_checkable
class ChoiceScorer(Sampler, Protocol):
    """A backend that also scores given continuations of a context (``sampling.candidates: choices``):
    a multiple-choice problem's choices become candidates with the rows a sampled completion has."""

    def score_choices(self, contexts: Sequence[str], continuations: Sequence[Sequence[str]],
                      progress: ProgressFn | None = None) -> list[list[Generation]]:
        """Per context, one :class:`Generation` per continuation (``sample_idx`` its index,
        ``finish_reason`` ``"choice"``), teacher-forced after the context encoded once, with the
        ``record`` a recording sampler writes plus the backend's extra layers (``hidden_l<k>``)."""
        ...


@runtime_checkable
class ContinuingSampler(Sampler, Protocol):
    """A backend that continues rows from a kept cache (what EBD's proposals need).

    A row's cache (``Generation.past``, ``Trace.past``) is opaque to callers: they only hand back
    what the same backend gave them."""

    def can_continue(self) -> bool:
        """Whether ``continue_rows(past=...)`` works for this model (e.g. not with sliding-window
        layers); callers then pass ``past=None`` and the backend re-encodes the prompts."""
        ...

    def continue_rows(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, seeds: list[int], max_new: list[int],
        past: list[Any] | None = None, keep_past: bool = False, forced: list[list[int]] | None = None,
        ban: list[int | None] | None = None,
    ) -> list[Generation]:
        """One row per token-id prompt, seeded ``row_seed(seeds[i], 0)`` (``params.n`` must be 1),
        at most ``max_new[i]`` new tokens. ``past[i]``: a cache whose tokens start like prompt ``i``
        (it may hold more, e.g. a whole earlier answer: only the shared prefix is used, the rest of
        the prompt is encoded). The row's ``record`` holds the recorded values, ``states``
        (``[T, H]``) and ``lse_temp`` (``logsumexp(logits / temperature)``, T + 1) whatever the
        backend's recording default; ``keep_past``: its ``past`` is the cache
        of its prompt and all its tokens but, at most, the last. ``forced[i]``: tokens row ``i`` emits
        first (counted in its cap, recorded as sampled ones: V2's decoded window), then it samples.
        ``ban[i]``: a token row ``i``'s first step must not pick, drawn from the step's distribution with
        it removed, recorded values those of the full distribution (EBD's differing proposals)."""
        ...

    def encode_answers(self, prompt: Sequence[int], answers: list[list[int]], keep_past: bool,
                       temperature: float = 1.0) -> list[Trace]:
        """Traces of given answers after one token-id prompt (one teacher-forced pass): the values
        the backend would have recorded had it sampled them at ``temperature`` (``lse_temp``), and
        (``keep_past``) their caches."""
        ...


def encode_per_prompt(sampler: ContinuingSampler, prompts: Sequence[Sequence[int]], answers: list[list[int]],
                      keep_past: bool, temperature: float = 1.0) -> list[Trace]:
    """Traces of ``answers[i]`` after ``prompts[i]`` by ``encode_answers``, one call per distinct prompt."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    out: list[Any] = [None] * len(answers)
    for prompt, idx in groups.items():
        for i, tr in zip(idx, sampler.encode_answers(list(prompt), [list(answers[i]) for i in idx],
                                                     keep_past=keep_past, temperature=temperature)):
            out[i] = tr
    return out


def encode_items(sampler: ContinuingSampler, prompts: Sequence[Sequence[int]], answers: list[list[int]],
                 keep_past: bool, temperature: float = 1.0) -> list[Trace]:
    """Traces of ``answers[i]`` after ``prompts[i]`` (EBD's chain starts, V2's start answers): through the
    backend's optional ``encode_many(prompts, answers, keep_past, temperature)`` when it has one (the HF
    backend's encodes the prompts' shared few-shot prefix once), else :func:`encode_per_prompt`. A
    backend needs only ``encode_answers``; ``encode_many`` must return what it would."""
    many = getattr(sampler, "encode_many", None)
    if many is not None:
        return many([list(p) for p in prompts], [list(a) for a in answers], keep_past=keep_past,
                    temperature=temperature)
    return encode_per_prompt(sampler, prompts, answers, keep_past, temperature)


@runtime_checkable
class LatentSampler(ContinuingSampler, Protocol):
    """A continuing backend whose last-layer states can be decoded (what V2's optimiser needs: it
    reads an answer's states from its :class:`impetus.lm.trace.Trace` and continues the answer after
    decoding them, ``continue_rows(forced=...)``)."""

    def state_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[..., V]`` of given last-layer states, differentiable in ``states``."""
        ...


@dataclass
class Particle:
    """One particle of a :class:`ParticleSampler` at a block boundary: its answer so far (``n_tokens``
    kept tokens), every step's raw ``lse`` and tempered ``lse_temp`` so far (one per token; when it
    has finished, the ending step's too, as in :class:`impetus.lm.trace.Trace`), and whether it has
    finished (EOS, a stop string or the length cap)."""

    n_tokens: int
    lse: Sequence[float]
    lse_temp: Sequence[float]
    finished: bool


Resample = Callable[[int, "list[Particle]"], "Sequence[int] | None"]
"""``resample(prompt_index, particles) -> ancestors``: called at each of a prompt's block boundaries
and once when its last particle has finished; particle ``j`` then becomes a copy of particle
``ancestors[j]`` (its tokens, record and cache); None: keep them all."""


@runtime_checkable
class ParticleSampler(ContinuingSampler, Protocol):
    """A continuing backend that resamples particles inside its own decoding loop (Power-SMC,
    :mod:`impetus.decoding.smc`): one prefill per prompt and one batch cache, rows copied by ancestor
    at block boundaries, instead of one ``continue_rows`` call (and cache copy) per block. Backends
    without it serve Power-SMC through ``continue_rows``, with the same particles."""

    def sample_particles(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, seeds: list[list[int]], block: int,
        resample: Resample, on_done: Callable[[int], None] | None = None,
    ) -> list[list[Generation]]:
        """``params.n`` particles per token-id prompt, all of a prompt's particles in one batch. A
        prompt's unfinished particles grow together, one token per step; after every ``block``
        steps (and when its last particle finishes) ``resample`` sees them. Particle ``j`` of prompt
        ``i`` draws the ``b``-th block it decodes (b = 0, 1, …) from a generator seeded
        ``row_seed(seeds[i][j] + b, 0)``, as ``continue_rows`` would for that block, so the particles do
        not depend on which prompts share the batch. Records as ``continue_rows`` records, plus the
        last prompt token's states (``prompt_state``, ``prompt_states_l<k>``). ``on_done(k)``: k
        prompts finished."""
        ...


def kept_before(tokenizer: Any, ids: list[int], cut: int) -> int:
    """How many of ``ids`` to keep so the kept text lies wholly before character ``cut`` (where a
    stop string starts): the longest such token prefix (a token straddling ``cut`` is dropped)."""
    m = len(ids)
    while m > 0 and len(tokenizer.decode(ids[:m], skip_special_tokens=False)) > cut:
        m -= 1
    return m


def row_seed(seed: int, sample_idx: int) -> int:
    """Seed of sample ``sample_idx`` of a prompt seeded with ``seed`` (stable across runs/platforms)."""
    h = hashlib.blake2b(f"{int(seed)}:{int(sample_idx)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


SamplerFactory = Callable[..., Sampler]
"""``factory(model, tokenizer, **kwargs) -> Sampler`` (a backend class is one)."""

# name -> factory, or the import path "package.module:attribute" of one, imported on first use
# (see the module docstring). Built-in backends are listed here by path only.
_REGISTRY: dict[str, SamplerFactory | str] = {
    "hf": "impetus.lm.hf_sampler:HFSampler",
}


def register_sampler(
    name: str, factory: SamplerFactory | str | None = None
) -> Callable[[SamplerFactory], SamplerFactory] | SamplerFactory | str:
    """Register a backend under ``name``.

    ``factory`` is a callable ``factory(model, tokenizer, **kwargs) -> Sampler`` or a lazy import
    path ``"package.module:attribute"``. Without ``factory`` this is a decorator::

        @register_sampler("vllm")
        def make_vllm(model, tokenizer, **kw): ...

    Registering a name again replaces the entry (so a project can override a built-in backend).
    """
    if factory is not None:
        if isinstance(factory, str) and ":" not in factory:
            raise ValueError(f"sampler import path must look like 'package.module:attribute', got {factory!r}")
        _REGISTRY[name] = factory
        return factory

    def deco(fn: SamplerFactory) -> SamplerFactory:
        _REGISTRY[name] = fn
        return fn

    return deco


def known_samplers() -> list[str]:
    """Names of the registered backends (imports none of them)."""
    return sorted(_REGISTRY)


def _resolve(name: str) -> SamplerFactory:
    """The factory registered as ``name``, importing it (once) if registered by path."""
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = factory  # cache: later lookups skip the import machinery
        return factory
    return entry


def get_sampler(name: str, model: Any, tokenizer: Any, **kwargs: Any) -> Sampler:
    """Build the sampler backend registered as ``name`` (``"hf"``; ``"vllm"`` once it exists), or
    named by its import path ``"package.module:attribute"``: a registration made in the driver does
    not reach Ray workers, an import path does.

    Raises ``KeyError`` naming the known backends when ``name`` is not registered.
    """
    if name not in _REGISTRY:
        if ":" not in name:
            raise KeyError(f"Unknown sampler backend {name!r}. Known: {known_samplers()}, or an import path "
                           "'package.module:attribute'")
        register_sampler(name, name)  # an import path names itself (what a Ray worker can import)
    return _resolve(name)(model, tokenizer, **kwargs)
