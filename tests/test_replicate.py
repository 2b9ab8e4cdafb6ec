"""The replication driver without Kedro: command construction, per-seed folders and resume.

The runner is injected: a fake that writes the rerank_metrics.json a ``kedro run`` would, so the
driver's logic runs in milliseconds. The parent/child MLflow link itself is tested in
tests/test_mlflow_runs.py and tests/test_mlflow_session.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from impetus.framework.mlflow_runs import PARENT_RUN_ENV
from impetus.framework.replicate import (
    aggregate_metrics,
    is_done,
    kedro_command,
    parse_params,
    replicate,
    runtime_params,
    seed_dir,
    seed_overrides,
    write_matrix,
)

ARITH = {
    "benchmark": {"name": "arith", "options": {"arith": {"n_problems": 400, "seed": 0}}},
    "ingest": {"seed": 0},
    "sampling": {"seed": 0, "shard_dir": "data/03_primary/sampling_shards_large/"},
}
SVAMP = {**ARITH, "benchmark": {"name": "svamp", "options": {"arith": {"seed": 0}}}}


def test_seed_overrides_set_generator_split_and_shard_folder():
    assert seed_overrides(ARITH, 3) == {
        "benchmark.options.arith.seed": 3,
        "ingest.seed": 3,
        "sampling.shard_dir": "data/03_primary/sampling_shards_large/seed_3",
    }
    # SVAMP's problems are fixed: the seed only re-splits them.
    assert seed_overrides(SVAMP, 1) == {"ingest.seed": 1, "sampling.shard_dir": "data/03_primary/sampling_shards_large/seed_1"}
    bbh = {"benchmark": {"name": "bbh:navigate", "options": {"bbh": {"seed": 0}}}, "ingest": {"seed": 0}}
    assert seed_overrides(bbh, 2)["benchmark.options.bbh.seed"] == 2
    # On scored choices every seed looks up the env's whole shard folder for rows to reuse.
    arc = {"benchmark": {"name": "arc_easy"}, "sampling": {"candidates": "choices", "shard_dir": "data/s_arc/"}}
    assert seed_overrides(arc, 1) == {"ingest.seed": 1, "sampling.shard_dir": "data/s_arc/seed_1",
                                      "sampling.reuse_dir": "data/s_arc", "scorer.seed": 100, "rerank_eval.seed": 1}


def test_kedro_command():
    assert kedro_command(".venv/bin/kedro", "v1_rerank", "large", seed_overrides(ARITH, 2)) == [
        ".venv/bin/kedro", "run", "-p", "v1_rerank", "--env", "large", "--params",
        "benchmark.options.arith.seed=2,ingest.seed=2,sampling.shard_dir=data/03_primary/sampling_shards_large/seed_2",
    ]
    with pytest.raises(ValueError, match="commas"):
        kedro_command("kedro", "v1_rerank", "base", {"sampling.shard_dir": "a,b"})


def test_runtime_params_nest_dotted_keys_as_kedro_run_does():
    """A dotted key handed to ``KedroSession.create(runtime_params=...)`` is silently ignored, so the
    scripts that make a session from ``key=value`` arguments must nest them as ``kedro run --params``."""
    from kedro.framework.cli.utils import _split_params

    text = "ebd.n_problems=100,benchmark.options.arith.ops=+-,sampling.shard_dir=x/y"
    got = runtime_params(parse_params(text))
    assert got == _split_params(None, None, text)
    assert got == {"ebd": {"n_problems": 100}, "benchmark": {"options": {"arith": {"ops": "+-"}}},
                   "sampling": {"shard_dir": "x/y"}}


def _metrics(gain: float, method: str = "hybrid") -> dict:
    acc = 0.5 + gain
    m = {"accuracy": acc, "ci": [acc - 0.1, acc + 0.1], "gain_vs_single": gain, "gain_vs_single_ci": [gain - 0.05, gain + 0.05],
         "gain_vs_majority": gain - 0.05, "gain_vs_majority_ci": [gain - 0.1, gain]}
    base = {"accuracy": 0.5, "ci": [0.4, 0.6], "gain_vs_single": 0.0, "gain_vs_single_ci": [0.0, 0.0],
            "gain_vs_majority": -0.05, "gain_vs_majority_ci": [-0.1, 0.0]}
    return {"methods": {"first": base, "majority": base, "oracle": base, method: m},
            "headline": {"method": method, "selected_on": "cv"}, "single": 0.5, "majority": 0.55, "oracle": 0.9}


class FakeKedro:
    """Records each command and writes the metrics a run on that data seed would."""

    def __init__(self, root: Path, gains: dict[int, float], fail: set[int] = frozenset()) -> None:
        self.root, self.gains, self.fail = root, gains, set(fail)
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, command: list[str], environ: dict) -> int:
        seed = int(command[-1].split("ingest.seed=")[1].split(",")[0])
        self.calls.append((command, environ.get(PARENT_RUN_ENV)))
        if seed in self.fail:
            return 1
        out = self.root / "data" / "08_reporting"
        out.mkdir(parents=True, exist_ok=True)
        (out / "rerank_metrics.json").write_text(json.dumps(_metrics(self.gains[seed])))
        (out / "rerank_report.md").write_text(f"report of seed {seed}\n")
        return 0

    def seeds_run(self) -> list[int]:
        return [int(c[-1].split("ingest.seed=")[1].split(",")[0]) for c, _ in self.calls]


def test_each_seed_keeps_its_reports_and_the_aggregate_is_written(tmp_path):
    kedro = FakeKedro(tmp_path, {0: 0.14, 1: 0.11, 2: 0.02})
    result = replicate(tmp_path, "base", [0, 1, 2], ARITH, kedro, kedro="k", parent_run_id="parent123")
    assert kedro.seeds_run() == [0, 1, 2]
    assert {parent for _, parent in kedro.calls} == {"parent123"}
    for seed in (0, 1, 2):
        folder = seed_dir(tmp_path, "base", seed)
        assert (folder / "rerank_report.md").read_text() == f"report of seed {seed}\n"
        assert json.loads((folder / "rerank_metrics.json").read_text())["methods"]["hybrid"]["gain_vs_single"] == {
            0: 0.14, 1: 0.11, 2: 0.02}[seed]
    assert result["gain_vs_single"]["mean"] == pytest.approx(0.09)
    written = json.loads((tmp_path / "data/08_reporting/replication.json").read_text())
    assert written["seeds"]["2"]["gain_vs_single"] == pytest.approx(0.02) and written["env"] == "base"
    assert "Over **3 data seeds**" in (tmp_path / "data/08_reporting/replication.md").read_text()
    assert (tmp_path / "data/08_reporting/replication/base/replication.md").exists()
    metrics = aggregate_metrics(result)
    assert metrics["replication/gain_vs_single_mean"] == pytest.approx(0.09)
    assert metrics["replication/n_seeds"] == 3.0


def test_finished_seeds_are_skipped_and_a_failed_one_reruns(tmp_path):
    first = FakeKedro(tmp_path, {0: 0.1, 1: 0.2}, fail={1})
    with pytest.raises(RuntimeError, match="exit status 1"):
        replicate(tmp_path, "base", [0, 1], ARITH, first, kedro="k")
    assert first.seeds_run() == [0, 1]
    assert not (seed_dir(tmp_path, "base", 1) / "run.json").exists()
    assert not (tmp_path / "data/08_reporting/replication.json").exists()

    again = FakeKedro(tmp_path, {0: 0.1, 1: 0.2, 2: 0.3})
    result = replicate(tmp_path, "base", [0, 1, 2], ARITH, again, kedro="k")
    assert again.seeds_run() == [1, 2]  # seed 0 was done
    assert result["n_seeds"] == 3

    other_venv = FakeKedro(tmp_path, {0: 0.1, 1: 0.2, 2: 0.3})
    replicate(tmp_path, "base", [0, 1, 2], ARITH, other_venv, kedro="/elsewhere/kedro")
    assert other_venv.seeds_run() == []  # the kedro executable's path is not part of the command's identity
    replicate(tmp_path, "base", [0, 1, 2], ARITH, other_venv, kedro="k", force=True)
    assert other_venv.seeds_run() == [0, 1, 2]


def test_a_seed_made_with_other_params_is_not_reused(tmp_path):
    kedro = FakeKedro(tmp_path, {0: 0.1})
    replicate(tmp_path, "base", [0], ARITH, kedro, kedro="k")
    folder = seed_dir(tmp_path, "base", 0)
    same = kedro_command("k", "v1_rerank", "base", seed_overrides(ARITH, 0))
    assert is_done(folder, same)
    moved = {**ARITH, "sampling": {"shard_dir": "elsewhere"}}
    assert not is_done(folder, kedro_command("k", "v1_rerank", "base", seed_overrides(moved, 0)))
    assert not is_done(folder, kedro_command("k", "v1_rerank", "large", seed_overrides(ARITH, 0)))


def test_seeds_run_one_call_at_a_time_join_one_aggregate(tmp_path):
    """make panel ... PANEL_SEEDS=1 after PANEL_SEEDS=0: the folder's aggregate has both seeds; a seed
    made with other params stays out."""
    kedro = FakeKedro(tmp_path, {0: 0.1, 1: 0.2, 2: 0.3})
    replicate(tmp_path, "base", [0], ARITH, kedro, kedro="k")
    moved = {**ARITH, "sampling": {"shard_dir": "elsewhere"}}
    replicate(tmp_path, "other", [2], moved, kedro, kedro="k", name="base")  # same folder, other command
    result = replicate(tmp_path, "base", [1], ARITH, kedro, kedro="k")
    assert kedro.seeds_run() == [0, 2, 1]  # nothing rerun
    assert result["n_seeds"] == 2 and sorted(result["seeds"]) == ["0", "1"]
    assert result["gain_vs_single"]["mean"] == pytest.approx(0.15)


def test_a_run_that_writes_no_metrics_fails(tmp_path):
    with pytest.raises(RuntimeError, match="was not written"):
        replicate(tmp_path, "base", [0], ARITH, lambda command, environ: 0, kedro="k")
    assert not seed_dir(tmp_path, "base", 0).exists()


def test_extra_params_reach_every_seed_and_the_replication_has_its_own_folder(tmp_path):
    kedro = FakeKedro(tmp_path, {0: 0.1, 1: 0.05})
    extra = parse_params("model.name_or_path=gemma3-270m, sampling.n=4")
    assert extra == {"model.name_or_path": "gemma3-270m", "sampling.n": "4"}
    params = {**SVAMP, "model": {"name_or_path": "gemma3-270m"}}
    result = replicate(tmp_path, "svamp", [0, 1], params, kedro, kedro="k", extra=extra, name="svamp-gemma")
    assert all(c[-1].startswith("model.name_or_path=gemma3-270m,sampling.n=4,ingest.seed=") for c, _ in kedro.calls)
    assert (seed_dir(tmp_path, "svamp-gemma", 1) / "run.json").exists()
    assert not (tmp_path / "data/08_reporting/replication/svamp").exists()
    assert (result["benchmark"], result["model"], result["name"]) == ("svamp", "gemma3-270m", "svamp-gemma")
    with pytest.raises(ValueError, match="key=value"):
        parse_params("model.name_or_path")


def test_matrix_has_one_row_per_replication_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="make replicate"):
        write_matrix(tmp_path)
    replicate(tmp_path, "large", [0, 1, 2], ARITH, FakeKedro(tmp_path, {0: 0.14, 1: 0.11, 2: 0.12}), kedro="k")
    replicate(tmp_path, "svamp", [0], SVAMP, FakeKedro(tmp_path, {0: 0.02}), kedro="k")
    text = write_matrix(tmp_path)
    assert text == (tmp_path / "data/08_reporting/matrix.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| arith (large)") or line.startswith("| svamp |")]
    assert len(rows) == 2
    arith, svamp = rows
    # Three seeds: t interval over seeds; one seed: its own bootstrap CI [gain - 5, gain + 5].
    assert "**+12.3**" in arith and "(t over seeds)" in arith and arith.endswith("| ideal |")
    assert "**+2.0** [-3.0, +7.0] (bootstrap over problems)" in svamp and svamp.endswith("| none |")
