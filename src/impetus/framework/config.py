"""Typed parameters for every stage: types, bounds and a one-line description per field.

The values live in ``conf/base/parameters_<stage>.yml`` only: no field here has a default, so YAML
and code can never disagree. Every block of :data:`PARAMS` is validated as soon as the Kedro
context exists, whatever pipeline is selected (:mod:`impetus.framework.param_hooks`): a misspelt key,
``sampling.n=0``, ``v2_latent.lr=-1`` or ``model.device=cuda`` on a CPU machine fails at once with
one short line, before ingest overwrites anything. Nodes annotate their ``params:`` inputs with
these classes, so Kedro hands each node an instance instead of a dict.
Kedro-free: a notebook builds one with ``SamplingStageParams(**yaml_block)`` or :func:`parse`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import StringConstraints, ValidationError, field_validator, model_validator

from impetus.framework.config_decoding import ComputeMatchParams, EBDParams, LatentParams
from impetus.framework.params_base import F, _Params


class BenchmarkParams(_Params):
    """Which benchmark to use and where its data comes from (``parameters_ingest.yml``)."""

    name: str = F("Registry name: arith, gsm8k, svamp, arc_challenge, arc_easy, bbh, bbh:<task>, math500.")
    source: str = F("'generated' (arith), 'hf' (the hub, needs internet), or a local file/folder.")
    options: dict[str, dict[str, Any]] = F(
        "Constructor options per benchmark name (e.g. arith: {n_problems: 400}); only the entry of "
        "`name` (or of its family before ':') is used, so switching benchmark needs no other edit."
    )

    @model_validator(mode="after")
    def _known_benchmark(self) -> "BenchmarkParams":
        self.build()  # unknown names and options that the benchmark does not take fail here
        return self

    def benchmark_options(self) -> dict[str, Any]:
        """The options of the selected benchmark (``bbh:<task>`` falls back to ``bbh``'s)."""
        family = self.name.split(":", 1)[0]
        return dict(self.options.get(self.name) or self.options.get(family) or {})

    def build(self) -> Any:
        """The configured :class:`impetus.benchmarks.base.Benchmark` instance."""
        from impetus.benchmarks import get_benchmark

        return get_benchmark(self.name, **self.benchmark_options())


class IngestParams(_Params):
    """Sizes of the disjoint train / dev / eval problem splits (``parameters_ingest.yml``)."""

    n_train: int | None = F("Problems whose candidates train the learned energies; null = all left.", ge=0)
    n_dev: int = F("Held-out train-side problems on which the headline method and tau are chosen.", ge=0)
    n_eval: int | None = F("Held-out problems every method is judged on; null = all.", ge=1)
    seed: int = F("Seed of the split.")


class ModelParams(_Params):
    """The causal LM that proposes candidates (``parameters_base_model.yml``)."""

    name_or_path: str = F("Alias (smollm2-135m-instruct), hub id, local HF folder or .gguf file.")
    cache_dir: str | None = F("Where converted models are cached; null = $IMPETUS_CACHE or ~/.cache/impetus/models.")
    trust_remote_code: bool = F("Allow the model repository's own Python code (off unless you trust it).")
    allow_pickle: bool = F(
        "Allow a local folder with only a pickle checkpoint (unpickling can run code); off = refuse it."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = F(
        "auto: bf16 on a CUDA device that supports it or a CPU where torch has a bf16 fast path (AMX or "
        "AVX512-BF16), else fp32. In half precision only the decoder blocks and input embeddings are half; "
        "the final norm, LM head and every recorded statistic stay fp32.")
    fp32_matmul: Literal["auto", "default", "onednn"] = F(
        "CPU kernels of the fp32 matmuls (the LM head; every matmul of an fp32 model): default = torch's own "
        "(MKL on x86), onednn = oneDNN's, auto = oneDNN on AMD CPUs (where MKL takes a generic path, 2-3x "
        "slower there) and torch's own elsewhere. Both compute in fp32; no effect off the CPU.")
    device: str = F("torch device: cpu, cuda, cuda:1, mps.")
    hidden_layers: list[int | Annotated[str, StringConstraints(pattern=r"^(mid|\d+/\d+)$")]] = F(
        "Layers besides the last whose states scored choices pool over their tokens (hidden_l<k>): a decoder "
        "block's index k (HF hidden_states[k]), 'mid' (the middle block) or a fraction of the depth such as "
        "'1/4'; [] = the last layer only.")

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        import torch

        kind = device.split(":", 1)[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"model.device={device!r} but no CUDA device is available here; use 'cpu'")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"model.device={device!r} but MPS is not available here; use 'cpu'")
        if kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"model.device must be cpu, cuda[:i] or mps, got {device!r}")
        return device


class SamplingStageParams(_Params):
    """Candidate generation (``parameters_sampling.yml``)."""

    backend: str = F("Sampler registry key (impetus.lm.sampler): hf; or an import path 'package.module:attr'.")
    executor: Literal["local", "ray"] = F(
        "Where shards are sampled: local (this process) or ray (actors on a Ray cluster; the `ray` block).")
    prompt_style: Literal["fewshot", "chat_cot"] = F("fewshot (needs exemplars) or chat_cot (chat template).")
    n: int = F("Candidates per problem.", ge=1)
    temperature: float = F("Sampling temperature; 0 = greedy.", ge=0.0)
    top_p: float = F("Nucleus mass in (0, 1].", gt=0.0, le=1.0)
    max_new_tokens: int = F("Hard cap on completion tokens (a cut completion is counted as truncated).", ge=1)
    stop: list[str] | None = F("Stop strings; null = the benchmark's own for the prompt style.")
    batch_size: int = F("Rows decoded together (speed only, not results).", ge=1)
    shard_size: int = F("Problems per resumable shard.", ge=1)
    seed: int = F("Base seed; each problem's seed derives from it and the problem id.")
    shard_dir: str = F("Folder of the resumable sampling shards.")
    reuse_dir: str | None = F(
        "Scored choices only: folder searched, with its subfolders, for other runs' rows of the same items "
        "(model, layers, context, choices), reused instead of scoring again; null = shard_dir.")
    progress: bool = F("Show a progress bar.")
    record: bool = F("Record raw-logit statistics and last-layer states while decoding (no second pass).")
    candidates: Literal["sampled", "choices"] = F(
        "sampled: n completions per problem; choices: a multiple-choice problem's choices, each teacher-forced "
        "after lm-eval's prompt (ARC, the option tasks of BBH), recorded like sampled rows.")
    choice_shots: int = F("candidates=choices: exemplars before the question (lm-eval's num_fewshot); 0 = zero-shot.",
                          ge=0)
    choice_orders: int = F(
        "Multiple choice (ARC) only: orders of the answer choices per problem, the N samples spread evenly "
        "over them (order 0 = the source's, others seeded by the problem id); breaks the position bias a vote "
        "inherits. 1 = off. V2, EBD and teacher-forced energies need 1.", ge=1)
    adaptive: Literal["off", "vote_margin", "deepconf"] = F(
        "Adaptive N online for the eval split: off (N samples each), or the rule that stops a problem once its "
        "answer is settled, sampling rerank_eval.adaptive.wave at a time; its threshold is chosen on the train "
        "and dev candidates (sampled at full N) as the offline report chooses it. Its shards hold shard_size x "
        "ceil(n / wave) problems, so a first wave fills the batch as a full-N shard does. Sampled completions only; "
        "EBD needs it off.")

    @field_validator("adaptive", mode="before")
    @classmethod
    def _off_is_a_word(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 (and `--params sampling.adaptive=off`) read off as false

    @model_validator(mode="after")
    def _orders_split_n(self) -> "SamplingStageParams":
        if self.n % self.choice_orders:
            raise ValueError(f"sampling.n = {self.n} must split evenly over sampling.choice_orders = {self.choice_orders}")
        if self.adaptive != "off" and (self.candidates == "choices" or self.choice_orders > 1):
            raise ValueError(f"sampling.adaptive = {self.adaptive} stops sampled completions by their vote; it needs "
                             "sampling.candidates = sampled and sampling.choice_orders = 1")
        return self


class RayParams(_Params):
    """The Ray cluster of ``sampling.executor: ray`` (``parameters_sampling.yml``)."""

    address: str = F("Empty = $RAY_ADDRESS, else the Ray started on this machine, else a new local one; "
                     "'auto' = an existing cluster only; 'ray://host:10001' = Ray Client.")
    workers: int | None = F("Sampler actors (each loads the model once); null = as many as the cluster's "
                            "CPUs (GPUs if gpus_per_worker > 0) allow.", ge=1)
    cpus_per_worker: float = F("CPUs per actor, also its torch threads.", gt=0)
    gpus_per_worker: float = F("GPUs per actor (0 = CPU workers); > 0 samples on the actor's CUDA device.", ge=0)
    device: str | None = F("Actors' torch device; null = model.device (cuda when gpus_per_worker > 0). Not "
                           "checked on the driver, which may have no GPU.")
    max_retries: int = F("Times a shard is resubmitted (and a dead actor restarted) after its worker died.", ge=0)
    dashboard: bool = F("Start Ray's dashboard with a Ray this run starts itself (an existing cluster keeps its own).")

    def to_core(self) -> Any:
        """The Kedro-free :class:`impetus.lm.ray_executor.RayConfig` with these values."""
        from impetus.lm.ray_executor import RayConfig  # lazy: the schema loads without Ray

        return RayConfig(**self.model_dump())


class EnergyStageParams(_Params):
    """Logit energies (recorded or teacher-forced) and consistency energies (``parameters_energies.yml``)."""

    logit_source: Literal["auto", "recorded", "teacher_forced"] = F(
        "Where logit energies and hidden states come from: the sampler's recording (no LM pass), a "
        "teacher-forced pass (the reference), or auto (recorded when the candidates carry it)."
    )
    batch_size: int = F("Candidates of one prompt per teacher-forced forward pass.", ge=1)
    hidden_states: bool = F("Also pool last-layer hidden states (the LatentEBM needs them).")
    embedding_model: str | None = F("Sentence-transformers model; null = the offline MiniLM wheel.")
    embedding_batch_size: int = F("Completions per embedding batch.", ge=1)
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = F(
        "Dtype the embedding model encodes in (autocast; embeddings returned in fp32): auto = bf16 where the "
        "device has a bf16 fast path, the rule of model.dtype (AMX/AVX512-BF16 CPUs, bf16 CUDA), else fp32.")
    progress: bool = F("Show a progress bar.")


class MiningParams(_Params):
    """EORM group mining (``parameters_mining.yml``)."""

    hard_negative_energy: str | None = F(
        "Training-free energy whose preferred wrong candidates are counted as hard negatives (a metric)."
    )


class EBMTrainParams(_Params):
    """One learned energy's training loop (see :class:`impetus.learned.train.TrainConfig`)."""

    epochs: int = F("Most epochs.", ge=1)
    lr: float = F("AdamW learning rate.", gt=0)
    weight_decay: float = F("AdamW weight decay.", ge=0)
    batch_groups: int = F("Whole problems (groups) per step.", ge=1)
    patience: int = F("Stop after this many epochs without a better validation loss.", ge=1)
    val_fraction: float = F("Share of train groups held out for early stopping.", ge=0, lt=1)


class TextEBMParams(_Params):
    """TextEBM size (EORM-style encoder over question + completion)."""

    d_model: int = F("Model width.", ge=8)
    n_layers: int = F("Encoder layers.", ge=1)
    n_heads: int = F("Attention heads (divides d_model).", ge=1)
    d_ff: int = F("Feed-forward width.", ge=8)
    max_len: int = F("Most tokens per (question, completion); the question is cut from the left.", ge=8)
    dropout: float = F("Dropout.", ge=0, lt=1)
    score_dtype: Literal["auto", "float32", "bfloat16"] = F(
        "Dtype the encoder layers score candidates in (embeddings, final norm and head stay fp32; training is fp32): "
        "auto = bf16 where the CPU has a bf16 fast path, the rule of model.dtype (AMX/AVX512-BF16), else fp32.")
    train: EBMTrainParams = F("Training loop.")


_HIDDEN_SOURCE = r"^(mean|answer|both|layer|layer_both|cv|l\d+(_both)?)$"  # see learned.fitting.hidden_matrix


class LatentEBMParams(_Params):
    """LatentEBM size (MLP over the base LM's pooled last-layer hidden states)."""

    hidden_source: Annotated[str, StringConstraints(pattern=_HIDDEN_SOURCE)] = F(
        "Last layer: mean over the completion, answer's last token, or both; layer: the mean states of "
        "model.hidden_layers; layer_both: those and both; l<k> / l<k>_both: recorded layer k alone / with both; "
        "cv: both, each l<k>_both and layer_both compared by cross-validation on train-side problems.")
    hidden: int = F("Hidden width.", ge=4)
    n_layers: int = F("Hidden layers; 0 = a linear energy over the (layer-normed) states.", ge=0)
    dropout: float = F("Dropout.", ge=0, lt=1)
    train: EBMTrainParams = F("Training loop.")


class HybridParams(_Params):
    """Linear combination of energies fit with the pairwise loss on train groups."""

    columns: list[str] | None = F("Input energies; null = the energy registry's hybrid inputs.")
    l2_grid: list[float] = F("L2 strengths tried; the one with the best cross-validated train loss is used.", min_length=1)
    cross_fit_folds: int = F("Folds for out-of-fold learned energies and for choosing L2.", ge=2)


class ScorerParams(_Params):
    """Learned energies (``parameters_scorer.yml``)."""

    seed: int = F("First training seed; it also seeds the cross-fitting folds and the hybrid's L2 CV.")
    n_seeds: int = F(
        "Ensemble size by seed: each learned EBM averages one member per seed seed, seed+1, ..., seed+n_seeds-1 "
        "(each fit on all train groups) and the cross-fit fold members (scorer.hybrid.cross_fit_folds).", ge=1)
    fold_members: bool = F("Whether the cross-fit fold models join the ensembles (off with n_seeds: 1 = one model, "
                           "the control that isolates the ensembles' effect).")
    progress: bool = F("Show progress bars.")
    allow_pickle: bool = F(
        "Log an EBM to MLflow in pickle format when torch.export fails (loading it can run code); off = fail."
    )
    text_ebm: TextEBMParams = F("TextEBM.")
    latent_ebm: LatentEBMParams = F("LatentEBM.")
    hybrid: HybridParams = F("Hybrid energy.")

    def to_core(self) -> Any:
        """The core :class:`impetus.learned.fitting.ScorerConfig` (the one conversion from YAML)."""
        from impetus.learned.fitting import EBMSpec, ScorerConfig
        from impetus.learned.train import TrainConfig

        def spec(block: TextEBMParams | LatentEBMParams) -> EBMSpec:
            # The size fields are named as in TextEBMConfig / LatentEBMConfig, so they pass as is.
            train = TrainConfig(**block.train.model_dump(), seed=self.seed, progress=self.progress)
            return EBMSpec(model=block.model_dump(exclude={"train", "hidden_source", "score_dtype"}), train=train)

        return ScorerConfig(
            seeds=tuple(range(self.seed, self.seed + self.n_seeds)), fold_members=self.fold_members,
            progress=self.progress, text_ebm=spec(self.text_ebm), text_dtype=self.text_ebm.score_dtype,
            latent_ebm=spec(self.latent_ebm),
            hidden_source=self.latent_ebm.hidden_source, hybrid_columns=self.hybrid.columns,
            l2_grid=list(self.hybrid.l2_grid), cross_fit_folds=self.hybrid.cross_fit_folds,
        )


class AdaptiveParams(_Params):
    """Adaptive N stopping rules (after DeepConf), evaluated offline and exactly on the full-N candidates."""

    wave: int = F("Candidates added per problem per wave.", ge=1)
    thresholds: list[float] = F(
        "Consensus thresholds tried; each rule's is chosen on the selection data (rerank_eval.selection).", min_length=1
    )
    max_drop: float = F(
        "Most accuracy (fraction) a threshold may lose on the selection data against the same vote at N_max.", ge=0
    )
    energy: str = F("Energy of the energy-weighted-vote rule (its chosen tau is used).")


class RerankParams(_Params):
    """Evaluation of every selection method (``parameters_rerank_eval.yml``)."""

    selection: Literal["cv", "dev"] = F(
        "How the headline method, vote temperatures and adaptive-N thresholds are chosen: cv = K-fold "
        "cross-validation over train + dev problems (learned energies refit per fold, pooled out-of-fold "
        "accuracy); dev = on the dev split alone (the old rule)."
    )
    cv_folds: int = F("Folds of the cross-validation (selection: cv); each fold refits TextEBM, LatentEBM and the hybrid.", ge=2)
    shortlist: list[str] | None = F(
        "Methods the headline may be (those present; all if none is): the best of them out of fold (or on dev). "
        "null: every method. Sampled runs only; runs on a benchmark's choices choose among their whole table.")
    tau_grid: list[float] = F("Temperatures of the energy-weighted vote tried; chosen on the selection data.", min_length=1)
    weighted_vote: list[str] = F("Energies that also get an energy-weighted vote method (vote_<energy>).")
    n_boot: int = F("Bootstrap resamples over problems for CIs and paired tests.", ge=100)
    acc_vs_n_subsamples: int = F("Random candidate subsets per N in the accuracy-vs-N curve.", ge=1)
    curves: list[str] = F("Methods drawn in the accuracy-vs-N plot.")
    seed: int = F("Seed of bootstrap and subsampling.")
    adaptive: AdaptiveParams = F("Adaptive N.")

    @field_validator("tau_grid")
    @classmethod
    def _positive(cls, taus: list[float]) -> list[float]:
        if any(t <= 0 for t in taus):
            raise ValueError(f"every tau must be > 0, got {taus}")
        return taus


class LearningCurveParams(_Params):
    """Learning curves (``parameters_learning_curve.yml``; :mod:`impetus.selection.learning_curve`)."""

    sizes: list[int] = F("Train-side problem counts to refit at; sizes above what the run has are dropped "
                         "and the run's own count is always added.", min_length=1)
    methods: list[str] = F("Methods whose eval accuracy is drawn (rerank_metrics' names), besides the chosen one.")
    seed: int = F("Seed of the permutation whose first n problems form each point (nested subsets).")
    progress: bool = F("Show a progress bar over the points.")
    points_dir: str | None = F("Folder where each finished point is kept, keyed by the run's inputs, the settings "
                               "and the code, so a rerun refits only the points it lacks; null keeps none.")


#: Parameter block name -> its class (what ``kedro run`` validates, and what the docs list).
PARAMS: dict[str, type[_Params]] = {
    "benchmark": BenchmarkParams,
    "ingest": IngestParams,
    "model": ModelParams,
    "sampling": SamplingStageParams,
    "ray": RayParams,
    "energies": EnergyStageParams,
    "mining": MiningParams,
    "scorer": ScorerParams,
    "rerank_eval": RerankParams,
    "learning_curve": LearningCurveParams,
    "v2_latent": LatentParams,
    "ebd": EBDParams,
    "compute_match": ComputeMatchParams,
}


def parse(model: type[_Params], params: dict[str, Any] | _Params | None, where: str) -> Any:
    """Validate ``params`` against ``model`` (an instance passes through); errors name the block."""
    if isinstance(params, model):
        return params
    try:
        return model.model_validate(params or {})
    except ValidationError as exc:
        raise ValueError(f"Invalid parameters in '{where}':\n{exc}") from exc
