"""``make replicate``: the V1 pipeline on several data seeds, then the aggregate (one MLflow parent).

    python -m impetus.framework.replicate --seeds 0 1 2 --env base

Each seed is one ``kedro run -p v1_rerank --env <env> --params ...`` in a subprocess (its own MLflow
run and its own process state, like a run by hand) with the benchmark's generator seed (where the
benchmark has one), the split seed ``ingest.seed`` and its own sampling shard folder. Every env
writes to the same ``data/`` paths (conf/README.md), so after a seed's run its
``rerank_metrics.json`` and ``rerank_report.md`` are copied to
``data/08_reporting/replication/<env>/seed_<S>/`` with a ``run.json`` saying how it was made.

Resumable: a seed whose folder has a ``run.json`` with the same command is not run again (a
killed seed reruns, and its sampling shards are reused); ``--force`` reruns every seed. Then
:func:`impetus.selection.replication.aggregate` writes ``replication.json`` and ``replication.md``.
In MLflow the seed runs are children of one parent run per env (reopened on resume), which holds
the aggregate's metrics and both files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from impetus.framework.mlflow_runs import PARENT_RUN_ENV, _dig, data_seeds, process_tags
from impetus.selection.replication import aggregate, markdown_report

logger = logging.getLogger(__name__)

REPORTING = Path("data/08_reporting")
#: What each seed's run leaves in data/08_reporting that the replication keeps.
SEED_FILES = ("rerank_metrics.json", "rerank_report.md")
REPLICATION_TAG = "impetus.replication"

#: ``runner(command, environment) -> exit status``: a subprocess by default, a fake in tests.
Runner = Callable[[list[str], Mapping[str, str]], int]


def seed_overrides(params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The ``--params`` of one seed: generator seed (if the benchmark has one), split seed, shards.

    Fixed benchmarks (SVAMP, ARC, ...) have no generator seed: there the seed only re-splits
    the problems. Shards go to ``<sampling.shard_dir>/seed_<S>`` (the env's folder, so envs with
    other sizes or models never share one). On scored choices every seed looks up the env's whole
    shard folder for rows it can reuse (``sampling.reuse_dir``): a re-split scores nothing again;
    and a seed also sets ``scorer.seed`` (100 x the seed: disjoint ensembles) and ``rerank_eval.seed``,
    the training and folds' seeds.
    """
    out: dict[str, Any] = {}
    generator, _ = data_seeds(dict(params))
    if generator is not None:
        name = str(_dig(dict(params), "benchmark", "name"))
        options = _dig(dict(params), "benchmark", "options") or {}
        key = name if name in options else name.split(":", 1)[0]
        out[f"benchmark.options.{key}.seed"] = seed
    out["ingest.seed"] = seed
    shard_dir = str(_dig(dict(params), "sampling", "shard_dir") or "data/03_primary/sampling_shards").rstrip("/")
    out["sampling.shard_dir"] = f"{shard_dir}/seed_{seed}"
    if _dig(dict(params), "sampling", "candidates") == "choices":  # every seed scores the same choices
        out["sampling.reuse_dir"] = shard_dir  # so a seed reuses the others' rows (impetus.lm.donors)
        # ARC's environments pool all of train + dev for cross-validation and evaluate on the whole
        # test split, so a re-split alone changes nothing (three identical seeds, measured): a seed
        # there also redraws the learned energies' training (init, folds) and the CV's folds.
        # Training seeds 100 apart, so the seeds' ensembles share no member (scorer.n_seeds < 100).
        out["scorer.seed"] = 100 * seed
        out["rerank_eval.seed"] = seed
    return out


def kedro_command(kedro: str, pipeline: str, env: str, overrides: Mapping[str, Any]) -> list[str]:
    """``kedro run -p <pipeline> --env <env> --params k=v,...`` as an argument list."""
    bad = [f"{k}={v}" for k, v in overrides.items() if "," in f"{k}{v}"]
    if bad:  # kedro splits --params on commas
        raise ValueError(f"--params values cannot hold commas: {bad}")
    params = ",".join(f"{k}={v}" for k, v in overrides.items())
    return [kedro, "run", "-p", pipeline, "--env", env, "--params", params]


def seed_dir(root: Path, env: str, seed: int) -> Path:
    return root / REPORTING / "replication" / env / f"seed_{seed}"


def is_done(folder: Path, command: Sequence[str]) -> bool:
    """Whether ``folder`` holds a finished seed made by the same command (run.json is written last)."""
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("command", [None])[1:] == list(command)[1:] and (folder / SEED_FILES[0]).exists()


def run_seed(root: Path, folder: Path, command: list[str], environ: Mapping[str, str], runner: Runner) -> None:
    """Run one seed and keep its reports in ``folder``; raise if kedro fails or wrote nothing new."""
    started = time.time()
    status = runner(command, environ)
    if status != 0:
        raise RuntimeError(f"seed run failed with exit status {status}: {' '.join(command)}")
    metrics = root / REPORTING / SEED_FILES[0]
    if not metrics.exists() or metrics.stat().st_mtime < started - 1:
        raise RuntimeError(f"{metrics} was not written by: {' '.join(command)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SEED_FILES:
        if (root / REPORTING / name).exists():
            shutil.copy2(root / REPORTING / name, folder / name)
    record = {"command": command, "seconds": round(time.time() - started, 1), "finished": time.time()}
    tmp = folder / "run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, folder / "run.json")  # atomic: a seed is done only once its files are copied


def replicate(
    root: Path, env: str, seeds: Sequence[int], params: Mapping[str, Any], runner: Runner,
    pipeline: str = "v1_rerank", kedro: str = "kedro", parent_run_id: str | None = None, force: bool = False,
    extra: Mapping[str, Any] | None = None, name: str | None = None,
) -> dict[str, Any]:
    """Run the seeds not done yet, then aggregate them all; returns the replication result.

    ``extra``: more ``--params`` for every seed (e.g. ``model.name_or_path=gemma3-270m`` on a
    benchmark env; ``params`` must already include them). ``name``: the replication folder
    (default: the env). Seeds finished earlier in that folder by the same command (another call
    with other ``seeds``, e.g. one panel cell at a time) join the aggregate. Writes
    ``replication.json``/``.md`` to ``data/08_reporting`` and to that folder.
    """
    name = name or env
    per_seed = {}
    environ = dict(os.environ)
    if parent_run_id:
        environ[PARENT_RUN_ENV] = parent_run_id
    def command_of(seed: int) -> list[str]:
        return kedro_command(kedro, pipeline, env, dict(extra or {}) | seed_overrides(params, seed))

    for seed in seeds:
        folder = seed_dir(root, name, seed)
        command = command_of(seed)
        if force or not is_done(folder, command):
            logger.info("Data seed %s: %s", seed, " ".join(command))
            run_seed(root, folder, command, environ, runner)
        else:
            logger.info("Data seed %s: done before, reusing %s", seed, folder)
        per_seed[seed] = json.loads((folder / SEED_FILES[0]).read_text())
    for seed in _done_before(root, name, set(seeds), command_of):
        logger.info("Data seed %s: finished before by the same command, joins the aggregate", seed)
        per_seed[seed] = json.loads((seed_dir(root, name, seed) / SEED_FILES[0]).read_text())
    result = aggregate(per_seed) | {"env": env, "name": name, "extra_params": dict(extra or {}), "pipeline": pipeline,
                                    "benchmark": _dig(dict(params), "benchmark", "name"),
                                    "model": _dig(dict(params), "model", "name_or_path")}
    text = markdown_report(result, title=f"Replication across data seeds ({name})")
    for folder in (root / REPORTING, root / REPORTING / "replication" / name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "replication.json").write_text(json.dumps(result, indent=2))
        (folder / "replication.md").write_text(text)
    return result


def _done_before(root: Path, name: str, skip: set[int], command_of: Callable[[int], list[str]]) -> list[int]:
    """Seeds of the ``name`` folder, other than ``skip``, finished by the command this call would run."""
    found = []
    for folder in (root / REPORTING / "replication" / name).glob("seed_*"):
        seed = folder.name.removeprefix("seed_")
        if seed.isdigit() and int(seed) not in skip and is_done(folder, command_of(int(seed))):
            found.append(int(seed))
    return sorted(found)


def write_matrix(root: Path) -> str:
    """``data/08_reporting/matrix.md``: one row per replication folder (benchmark × model)."""
    from impetus.selection.matrix import markdown_matrix, matrix_row

    rows = []
    for path in sorted((root / REPORTING / "replication").glob("*/replication.json")):
        rows.append(matrix_row(json.loads(path.read_text()), path.parent.name))
    if not rows:
        raise FileNotFoundError(f"no {REPORTING}/replication/*/replication.json yet: run make replicate first")
    text = markdown_matrix(rows)
    (root / REPORTING / "matrix.md").write_text(text)
    return text


def subprocess_runner(root: Path) -> Runner:
    def run(command: list[str], environ: Mapping[str, str]) -> int:
        return subprocess.run(command, cwd=root, env=dict(environ)).returncode

    return run


def aggregate_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's metrics: mean gains with their interval ends, and the counts."""
    out: dict[str, float] = {}
    for key in ("gain_vs_single", "gain_vs_majority", "accuracy"):
        block = result[key]
        out |= {f"replication/{key}_mean": block["mean"], f"replication/{key}_ci_lo": block["ci"][0],
                f"replication/{key}_ci_hi": block["ci"][1]}
    for key in ("n_seeds", "same_method_count", "chosen_is_post_hoc_best", "seeds_meeting_min_gain",
                "seeds_gain_ci_above_0", "seeds_beating_majority"):
        out[f"replication/{key}"] = float(result[key])
    return {k: v for k, v in out.items() if v == v}  # NaN (one seed: no interval) cannot be stored


def parse_params(text: str | None) -> dict[str, str]:
    """``"a.b=1,c=x"`` as ``{"a.b": "1", "c": "x"}`` (kedro's ``--params`` syntax; values stay text,
    the seed runs' kedro parses them)."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--params item {item!r} must be key=value")
        out[key.strip()] = value.strip()
    return out


def runtime_params(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": "1", "c": "x"}`` as the nested ``{"a": {"b": 1}, "c": "x"}`` that ``kedro run --params``
    hands its session (values parsed as YAML by OmegaConf). ``KedroSession.create(runtime_params=...)``
    takes nested keys only: a dotted key there is silently ignored."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}" for k, v in pairs.items()]))


def _load_context(root: Path, env: str, extra: Mapping[str, str] | None = None) -> Any:
    """The Kedro context of ``env`` (plus ``extra`` params, as ``kedro run --params`` would merge
    them): its parameters, and kedro-mlflow's tracking URI and experiment."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(root)
    runtime = runtime_params(extra or {})
    session = KedroSession.create(project_path=root, env=env, runtime_params=runtime or None)
    return session.load_context()


def _parent_run(root: Path, name: str, seeds: Sequence[int], params: Mapping[str, Any]) -> Any:
    """Start (or reopen, on resume) the replication's parent run; its id is kept beside the seed folders."""
    import mlflow

    from impetus.framework.mlflow_runs import build_run_name

    state = root / REPORTING / "replication" / name / "parent_run.json"
    # The benchmark and model only: the seeds are the children's.
    shown = {"benchmark": {"name": _dig(dict(params), "benchmark", "name")},
             "model": {"name_or_path": _dig(dict(params), "model", "name_or_path")}}
    title = f"{build_run_name('replicate', name, shown)} · data seeds {','.join(map(str, seeds))}"
    try:
        run_id = json.loads(state.read_text())["run_id"]
        mlflow.get_run(run_id)
        run = mlflow.start_run(run_id=run_id, run_name=title)
    except Exception:  # no state, or the run is gone from the store: a new parent
        run = mlflow.start_run(run_name=title)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"run_id": run.info.run_id}))
    mlflow.set_tags(process_tags() | {REPLICATION_TAG: "parent"})
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data seeds")
    parser.add_argument("--env", default="base", help="Kedro env (base: the quick defaults; large: V1 sizes)")
    parser.add_argument("--pipeline", default="v1_rerank")
    parser.add_argument("--force", action="store_true", help="rerun seeds that are already done")
    parser.add_argument("--no-mlflow", action="store_true", help="no parent run (seed runs still log)")
    parser.add_argument("--params", default="", help="more kedro --params for every seed, e.g. "
                        "model.name_or_path=gemma3-270m (then --name is required)")
    parser.add_argument("--name", default=None, help="replication folder under data/08_reporting/replication "
                        "(default: the env)")
    parser.add_argument("--matrix", action="store_true", help="only write data/08_reporting/matrix.md from "
                        "every replication folder, and print it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path.cwd()
    if args.matrix:
        print(write_matrix(root))
        return 0
    extra = parse_params(args.params)
    if extra and not args.name:
        parser.error("--params changes what is measured: give the replication a --name of its own")
    context = _load_context(root, args.env, extra)
    kedro = str(Path(sys.executable).with_name("kedro"))
    run_args = dict(root=root, env=args.env, seeds=args.seeds, params=context.params,
                    runner=subprocess_runner(root), pipeline=args.pipeline, kedro=kedro, force=args.force,
                    extra=extra, name=args.name)
    if args.no_mlflow:
        replicate(**run_args)
    else:
        _replicate_tracked(root, args, context.params, run_args)
    print((root / REPORTING / "replication.md").read_text())
    return 0


def _replicate_tracked(root: Path, args: argparse.Namespace, params: Any, run_args: dict[str, Any]) -> None:
    """:func:`replicate` inside the parent run, which gets the aggregate; FAILED/KILLED if it stops."""
    import mlflow

    _parent_run(root, args.name or args.env, args.seeds, params)
    status = "FAILED"
    try:
        result = replicate(**run_args, parent_run_id=mlflow.active_run().info.run_id)
        mlflow.log_metrics(aggregate_metrics(result))
        for name in ("replication.json", "replication.md"):
            mlflow.log_artifact(str(root / REPORTING / name), artifact_path="reports")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)


if __name__ == "__main__":
    sys.exit(main())
