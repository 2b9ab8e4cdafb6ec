"""Typed parameters of the stages after V1: V2 latent optimisation, EBD and the compute-matched choice
(split from :mod:`impetus.framework.config`, which re-exports them and lists them in ``PARAMS``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from impetus.framework.params_base import F, _Params

__all__ = ["V2_SETTINGS", "LatentParams", "EBDParams", "ComputeMatchParams"]


def _grid_keys(grid: dict[str, list[Any]], allowed: tuple[str, ...], block: str) -> dict[str, list[Any]]:
    """A dev grid's keys must be settings of the stage, each with at least one value."""
    bad = [k for k in grid if k not in allowed]
    if bad:
        raise ValueError(f"{block}.grid: {bad} are not settings the grid can choose; allowed: {list(allowed)}")
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ValueError(f"{block}.grid: {empty} list no values")
    return grid


#: The V2 settings a dev grid or a mode's own settings may set.
V2_SETTINGS = ("positions", "prefix_fraction", "window", "steps", "lr", "samples", "radius", "patience")


class LatentParams(_Params):
    """V2 latent optimisation (``parameters_v2_latent.yml``)."""

    n_problems: int | None = F("First eval problems optimised; null = all.", ge=1)
    energy: str = F("Energy (registry name) V2 minimises and picks its answer by.")
    starts: list[Literal["single", "v1"]] = F("Start answers: the first sample and/or the V1 headline's choice.", min_length=1)
    modes: list[Literal["reinforce", "gradient", "latentseek", "topk_pg"]] = F(
        "Update modes: reinforce (sampled windows), gradient (the LatentEBM's gradient), latentseek (LatentSeek's "
        "objective, absolute lr, last answer) and topk_pg (exact policy gradient over the top `samples` tokens at one "
        "position); impetus.latent.policy.", min_length=1)
    positions: Literal["prefix", "spilled", "surprisal", "entropy"] = F(
        "Which states are optimised: the answer's first tokens (prefix, LatentSeek) or a window from the token "
        "with the largest per-token signal.")
    prefix_fraction: float = F("positions=prefix: share of the answer's first tokens optimised.", gt=0, le=1)
    window: int = F("Signal rules: tokens optimised from the chosen position on.", ge=1)
    steps: int = F("Optimisation steps (0 = the control alone).", ge=0)
    lr: float = F("Step size. reinforce: Adam's step relative to the states' RMS coordinate (0.5: each coordinate "
                  "moves ~half of it); gradient: each step's length as a fraction of the radius; latentseek, topk_pg: "
                  "Adam's absolute lr (LatentSeek: 0.03-0.05). mode_settings sets it per mode.", gt=0)
    samples: int = F("Windows sampled per reinforce step (baseline = their mean reward).", ge=2)
    radius: float = F("Gradient mode: largest |z - z0| relative to |z0| per token.", gt=0)
    patience: int | None = F("Stop an answer after this many steps without a lower energy; null = every step.", ge=1)
    grid: dict[str, list[Any]] = F("Settings chosen on dev per mode (name -> values, cheaper first); {} = as set.")
    search: Literal["product", "coordinate"] = F(
        "How the grid is searched: every combination, or one setting at a time in the grid's order "
        "(impetus.selection.grid); steps are read off one run at the largest listed.")
    dev_problems: int | None = F("Dev problems the grid is scored on; null = all.", ge=1)
    mode_settings: dict[str, dict[str, Any]] = F(
        "Per mode, settings that replace the shared ones above (e.g. {latentseek: {lr: 0.05, positions: prefix}}); "
        "a dev grid still overrides them.")
    ceiling_k: int = F("V2's ceiling (impetus.latent.ceiling): top-k tokens forced at each position V2 edits and at "
                       "the answer's first token, on dev_problems dev and n_problems eval answers; 0 = off.", ge=0)
    compare_to: list[str] = F("V1 methods matched at V2's token budget ('headline' = the dev-chosen one).")
    n_boot: int = F("Bootstrap resamples.", ge=100)
    seed: int = F("Seed of sampling and regeneration.")
    progress: bool = F("Show a progress bar.")
    dev_runs_dir: str | None = F("Folder where each finished dev-grid run is kept, keyed by the model, the dev split, "
                                 "the learned energies, the settings and the code, so a rerun optimises only the runs "
                                 "it lacks; null keeps none.")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return _grid_keys(grid, V2_SETTINGS, "v2_latent")

    @field_validator("mode_settings")
    @classmethod
    def _mode_settings(cls, per_mode: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        modes = ("reinforce", "gradient", "latentseek", "topk_pg")
        unknown = sorted(set(per_mode) - set(modes))
        if unknown:
            raise ValueError(f"v2_latent.mode_settings names unknown modes {unknown}; known: {list(modes)}")
        for mode, settings in per_mode.items():
            bad = sorted(set(settings) - set(V2_SETTINGS))
            if bad:
                raise ValueError(f"v2_latent.mode_settings.{mode} sets {bad}; settable: {list(V2_SETTINGS)}")
        return per_mode

    def to_core(self) -> Any:
        """The Kedro-free :class:`impetus.latent.evaluate.V2Config` with these values (the dev runs'
        folder is the node's: :func:`impetus.pipelines.v2_latent.nodes.optimize_latents`)."""
        from impetus.latent.evaluate import V2Config  # lazy: the schema loads without torch

        return V2Config(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in self.model_dump(exclude={"dev_runs_dir"}).items()})


class EBDParams(_Params):
    """Energy-based decoding (``parameters_ebd.yml``)."""

    n_problems: int | None = F("First eval problems decoded; null = all.", ge=1)
    energy: str = F("Energy (registry name) E of the target p_LM^alpha · exp(-E/tau).")
    tau: float = F("Temperature of the tilt (EBD's beta = 1/tau; the paper's ~3.5 is tau ~0.3).", gt=0)
    alpha: float = F("Power of p_LM in the target; proposals sample at temperature 1/alpha (1 = plain tilt).", ge=1)
    block: int = F("Tokens per block (proposals regenerate from a block boundary on).", ge=1)
    chains: int = F("Chains per problem.", ge=1)
    n_init: int = F("Each chain starts from the lowest-energy of its own n_init V1 candidates (1 = a plain sample).",
                    ge=1)
    steps: int = F("MH steps per chain.", ge=0)
    answer: Literal["lowest", "vote"] = F(
        "EBD's answer: lowest (the lowest-energy state any chain visited) or vote (majority over the chains' final "
        "states); both are reported, this one is the chosen method (a grid may choose it on dev).")
    kernel: Literal["resample", "differ", "smc"] = F(
        "MH proposal: resample (regenerate from a block boundary) or differ (the regenerated block's first token "
        "must change, with its exact ratio; impetus.decoding.mh); or smc: no chains, Power-SMC (chains x n_init "
        "particles grown from the prompt block by block, resampled toward p_LM^alpha, tilted at the end; steps "
        "unused; impetus.decoding.smc).")
    grid: dict[str, list[Any]] = F("Settings chosen on dev (name -> values, cheaper first); {} = as set.")
    search: Literal["product", "coordinate"] = F(
        "How the grid is searched: every combination, or one setting at a time in the grid's order "
        "(impetus.selection.grid); steps are read off one run at the largest listed.")
    dev_problems: int | None = F("Dev problems the grid is scored on; null = all.", ge=1)
    n_boot: int = F("Bootstrap resamples.", ge=100)
    seed: int = F("Seed of the chains.")
    progress: bool = F("Show a progress bar.")
    dev_runs_dir: str | None = F("Folder where each finished dev-grid run is kept, keyed by the model, the dev split, "
                                 "the learned energies, the settings and the code, so a rerun decodes only the runs "
                                 "it lacks; null keeps none.")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return _grid_keys(grid, ("tau", "alpha", "block", "chains", "n_init", "steps", "answer", "kernel"), "ebd")

    def to_core(self) -> Any:
        """The Kedro-free :class:`impetus.decoding.evaluate.EBDConfig` with these values (the dev runs'
        folder is the node's: :func:`impetus.pipelines.ebd.nodes.run_chains`)."""
        from impetus.decoding.evaluate import EBDConfig  # lazy: the schema loads without torch

        return EBDConfig(**self.model_dump(exclude={"dev_runs_dir"}))


class ComputeMatchParams(_Params):
    """The compute-matched choice among V1, V2 and EBD (``parameters_compute_match.yml``)."""

    budgets: list[float] = F("Token budgets as multiples of one V1 sample's mean tokens per problem on dev.")
    v1_methods: list[str] = F("V1 methods offered at each n (registry names; headline = the one v1_rerank chose).")
    vote_for: list[str] = F("Energies whose vote_<energy> method is built (at tau 1 where v1_rerank chose none).")
    rule: Literal["best_dev", "beats_headline"] = F(
        "best_dev: the best dev accuracy that fits the budget; beats_headline: that option only if its paired dev CI "
        "against the V1 headline at the same budget is above 0, else the headline (resists the winner's curse).")
    n_boot: int = F("Bootstrap resamples.", ge=100)
    seed: int = F("Bootstrap seed.")
