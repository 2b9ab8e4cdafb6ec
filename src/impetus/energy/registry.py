"""The energy registry: one entry per energy, as data.

Every energy column in the project is oriented so that **lower = better** (the ``energies`` data
contract); an entry says how the raw quantity was turned that way, which family it belongs to,
what it needs to be computed, and which cost keys a method using it is charged. Selection, the
cost charging of :mod:`impetus.selection.report`, the hybrid's default inputs and the report all
read this table, so adding an energy is one entry here plus its function.

Cost keys (seconds measured where the work happens, then charged to every method that needs it):
``lm_pass`` the teacher-forced forward pass, ``embedding`` sentence embeddings of completions,
``text_ebm`` / ``latent_ebm`` / ``hybrid`` the learned energies' own scoring time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from impetus.energy.logit import ENERGY_COLUMNS

#: Cost keys of the shared scoring passes (the learned energies' keys are their own names).
LM_PASS_COST = "lm_pass"
EMBEDDING_COST = "embedding"

Family = Literal["logit", "consistency", "learned"]
Need = Literal["logits", "hidden_states", "embeddings", "answers", "trained_model"]


@dataclass(frozen=True)
class EnergySpec:
    """One energy: ``name`` is its column in the energies table (lower = better)."""

    name: str
    family: Family
    needs: tuple[Need, ...]
    cost_keys: tuple[str, ...]
    orientation: str  # how the raw quantity was made lower-is-better
    hybrid_input: bool = True  # a default input of the hybrid energy


def _logit(name: str) -> EnergySpec:
    orientation = "negated (higher raw = better)" if name.startswith("neg_") else "as is (higher = less plausible)"
    return EnergySpec(name, "logit", ("logits",), (LM_PASS_COST,), orientation)


ENERGIES: dict[str, EnergySpec] = {
    **{c: _logit(c) for c in ENERGY_COLUMNS},
    # lm-evaluation-harness's acc and acc_norm on a problem's choices (impetus.energy.recorded.loglik_energies):
    # present only when the candidates are scored choices.
    "neg_loglik": EnergySpec("neg_loglik", "logit", ("logits",), (LM_PASS_COST,),
                             "negated summed log-probability of the choice (lm-eval acc)"),
    "neg_loglik_per_char": EnergySpec("neg_loglik_per_char", "logit", ("logits",), (LM_PASS_COST,),
                                      "negated summed log-probability per character of the choice (lm-eval acc_norm)"),
    # Not a default hybrid input: on seven arithmetic testbeds the hybrid without it scored the same out
    # of fold (-0.2 points on average over train-side problems; +0.8 on a fresh eighth) at half the
    # scoring cost, MiniLM having been half of it (docs/results.md, "The hybrid without embedding consistency").
    "embedding_consistency": EnergySpec(
        "embedding_consistency", "consistency", ("embeddings",), (EMBEDDING_COST,),
        "negated mean cosine similarity to the problem's other completions", hybrid_input=False,
    ),
    "answer_agreement": EnergySpec(
        "answer_agreement", "consistency", ("answers",), (), "negated share of candidates with the same answer",
    ),
    "text_ebm": EnergySpec(
        "text_ebm", "learned", ("trained_model",), ("text_ebm",), "energy by construction (EORM loss)",
    ),
    "latent_ebm": EnergySpec(
        "latent_ebm", "learned", ("hidden_states", "trained_model"), (LM_PASS_COST, "latent_ebm"),
        "energy by construction (EORM loss)",
    ),
    "hybrid": EnergySpec(
        "hybrid", "learned", ("trained_model",), ("hybrid",), "energy by construction (pairwise loss)",
        hybrid_input=False,
    ),
}

#: Learned energies that the scorer stage fits as models (the hybrid is fit on top of them).
LEARNED_MODELS: tuple[str, ...] = ("text_ebm", "latent_ebm")


def spec(name: str) -> EnergySpec:
    """The registry entry of ``name``; a clear error lists the known energies."""
    if name not in ENERGIES:
        raise KeyError(f"unknown energy {name!r}; registered: {sorted(ENERGIES)}")
    return ENERGIES[name]


def energy_columns(columns: list[str] | tuple[str, ...] | object) -> list[str]:
    """The registered energies among ``columns`` (a table's columns), in registry order."""
    present = set(columns)  # type: ignore[arg-type]
    return [name for name in ENERGIES if name in present]


def hybrid_inputs(available: list[str] | None = None) -> list[str]:
    """Default inputs of the hybrid energy (restricted to ``available`` columns when given)."""
    names = [n for n, s in ENERGIES.items() if s.hybrid_input]
    return names if available is None else [n for n in names if n in set(available)]


def cost_keys(name: str, hybrid_cols: list[str] | tuple[str, ...] = ()) -> set[str]:
    """Cost keys a method ranking by energy ``name`` is charged (the hybrid: its inputs' too)."""
    keys = set(spec(name).cost_keys)
    if name == "hybrid":
        for col in hybrid_cols:
            keys |= set(spec(col).cost_keys)
    return keys
