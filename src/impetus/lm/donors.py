"""Rows reused across runs problem by problem: scored choices, whatever split a problem lands in.

A run's shards are keyed by the whole run (:func:`impetus.lm.runner.make_run_key`), so a new split
seed, which moves ARC's train problems between train and dev, would score every choice again
although no choice's row depends on which other problems share its run: a scored choice is one
teacher-forced pass over its own problem's context (:mod:`impetus.lm.hf_choices`; batching
problems together changes a row by float rounding only, which ``tests/lm/test_choices.py`` bounds).
So each problem also gets an **item key**, the hash of everything its rows depend on (model and
recorded layers, result-relevant sampling parameters, recording flag, problem id, prompt,
choices), written in its shard's manifest. When a shard of a new run is not on disk, a
:class:`DonorPool` looks its problems' item keys up in the other runs' manifests in a shard
folder (``sampling.reuse_dir``, searched with its subfolders: ``make replicate`` points it at the
env's shard folder, which holds every seed's); if every problem is found, the shard is assembled from those rows, checked like any shard
and written as the new run's own (so a later rerun reads it directly). Otherwise it is scored.

Sampled candidates are left out on purpose: their per-problem seeds are stable, but the sampler
draws a shard's problems as one batch, so a problem's tokens may differ with its batch-mates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from impetus.lm.sampler import SamplingParams

logger = logging.getLogger(__name__)


def item_keys(model_id: str, params: SamplingParams, items: pd.DataFrame, record: bool) -> list[str]:
    """One key per row of ``items`` (problem_id, prompt, choices): equal keys, equal rows."""
    head = hashlib.sha256()
    head.update(str(model_id).encode())
    head.update(json.dumps(params.result_dict(), sort_keys=True).encode())
    head.update(b"record" if record else b"plain")
    keys = []
    for pid, prompt, choices in zip(items["problem_id"].astype(str), items["prompt"].astype(str), items["choices"]):
        h = head.copy()
        h.update(b"\x00" + pid.encode() + b"\x01" + prompt.encode())
        h.update(b"\x02" + json.dumps([str(c) for c in choices]).encode())
        keys.append(h.hexdigest()[:24])
    return keys


class DonorPool:
    """The rows of other runs' shards under ``shard_dir`` (any depth), by item key (indexed on first use)."""

    def __init__(self, shard_dir: Path, own_dir: Path) -> None:
        self.shard_dir, self.own_dir = Path(shard_dir), Path(own_dir).resolve()
        self._index: dict[str, tuple[Path, str]] | None = None
        self._frames: dict[Path, dict[str, pd.DataFrame]] = {}  # donor shards read so far, by problem

    def _build(self) -> dict[str, tuple[Path, str]]:
        index: dict[str, tuple[Path, str]] = {}
        for mf in sorted(self.shard_dir.rglob("shard_*.json")):
            if mf.parent.resolve() == self.own_dir or not mf.with_suffix(".parquet").is_file():
                continue
            try:
                found = json.loads(mf.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # its own run reports and rescores it; here it is simply no donor
            for pid, key in zip(found.get("problem_ids", []), found.get("item_keys") or []):
                index[key] = (mf.with_suffix(".parquet"), str(pid))
        logger.info("%d problems' rows in other runs under %s", len(index), self.shard_dir)
        return index

    def assemble(self, problem_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame | None:
        """The rows of ``problem_ids`` from donor shards, or None unless every problem has a donor.

        The caller checks the table like any shard before trusting it."""
        if self._index is None:
            self._index = self._build()
        found = [self._index.get(k) for k in keys]
        if not found or any(f is None for f in found):
            return None
        parts = []
        for path, pid in found:  # type: ignore[misc]
            frame = self._read(path)
            if frame is None:
                return None
            parts.append(frame.get(pid, pd.DataFrame()))  # none: the caller's check names what is missing
        return pd.concat(parts, ignore_index=True)

    def _read(self, path: Path) -> dict[str, pd.DataFrame] | None:
        """A donor shard's rows by problem id (read once per run)."""
        if path not in self._frames:
            try:
                df = pd.read_parquet(path)
                self._frames[path] = dict(tuple(df.groupby(df["problem_id"].astype(str), sort=False)))
            except Exception as exc:  # noqa: BLE001 - a broken donor only means scoring instead
                logger.warning("donor shard %s unreadable (%s); scoring instead", path, exc)
                return None
        return self._frames[path]
