"""Learned energies: mining, `TextEBM`/`LatentEBM`, the pairwise training loop, the hybrid, and the
glue that fits them on candidate tables and passes them on as plain records.

Modules: :mod:`~impetus.learned.models`, :mod:`~impetus.learned.train`,
:mod:`~impetus.learned.persist`, :mod:`~impetus.learned.hybrid`, :mod:`~impetus.learned.mining`,
:mod:`~impetus.learned.fitting` (import them directly; they pull in torch).
"""
