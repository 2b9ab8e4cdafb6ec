"""Training-free energies (logit-based and consistency-based). Lower = better everywhere.

Only light modules are imported here: :mod:`impetus.energy.consistency` imports
sentence-transformers lazily, inside :func:`embed_texts`.
"""

from impetus.energy.consistency import (
    answer_agreement,
    default_embedding_model_path,
    embed_texts,
    embedding_consistency,
)
from impetus.energy.logit import (
    ENERGY_COLUMNS,
    FILL_VALUE,
    FLAG_COLUMNS,
    bottom_percent_group_confidence,
    candidate_energy_columns,
    candidate_energy_row,
    group_confidences,
    logit_energies,
    lowest_group_confidence,
    marginal_energy,
    pool_span,
    spilled_energy,
    tail_confidence,
)

__all__ = [
    "ENERGY_COLUMNS",
    "FILL_VALUE",
    "FLAG_COLUMNS",
    "answer_agreement",
    "bottom_percent_group_confidence",
    "candidate_energy_columns",
    "candidate_energy_row",
    "default_embedding_model_path",
    "embed_texts",
    "embedding_consistency",
    "group_confidences",
    "logit_energies",
    "lowest_group_confidence",
    "marginal_energy",
    "pool_span",
    "spilled_energy",
    "tail_confidence",
]
