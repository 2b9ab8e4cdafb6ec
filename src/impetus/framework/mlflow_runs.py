"""MLflow run hygiene without Kedro: run names, process tags, and closing runs whose process died.

Used by :class:`impetus.framework.hooks.MlflowRunLifecycleHook`; plain functions over an ``MlflowClient``
so they can be tested (and called from a notebook) without a Kedro session.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Experiment tag of the MLflow 3 UI's "experiment type" ("Machine learning", not "GenAI"). The
#: 3.17 UI reads it for that selector only: which tab an experiment opens on follows the sidebar's
#: per-browser GenAI / Model training switch, or ``?workflowType=machine_learning`` in the URL.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Run tags that tell a later run whether the process behind a RUNNING run is still alive.
PID_TAG, HOST_TAG, PID_START_TAG = "impetus.pid", "impetus.host", "impetus.pid_start"
END_REASON_TAG = "impetus.end_reason"


def build_run_name(pipeline: str, env: str, params: dict[str, Any]) -> str:
    """A run name like ``v1_rerank · large · arith · smollm2-135m-instruct · data seed 7 · sampling seed 0``.

    It tells runs apart in the runs table: pipeline, Kedro env, and the params ``benchmark.name``,
    ``model.name_or_path`` (basename), the data seed (:func:`data_seed_label`: which problems were
    generated and how they were split) and ``sampling.seed``; a missing param is left out.
    """
    model = str(_dig(params, "model", "name_or_path") or "").rstrip("/\\")
    model = re.sub(r"\.gguf$", "", re.split(r"[/\\]", model)[-1])
    seed = _dig(params, "sampling", "seed")
    sampling_part = None if seed is None else f"sampling seed {seed}"
    parts = [pipeline, env, _dig(params, "benchmark", "name"), model, data_seed_label(params), sampling_part]
    return " · ".join(str(p) for p in parts if p not in (None, ""))


def data_seeds(params: dict[str, Any]) -> tuple[Any, Any]:
    """``(generator seed, split seed)``: ``benchmark.options.<name>.seed`` (None for a fixed
    benchmark such as SVAMP, whose problems do not depend on a seed) and ``ingest.seed``."""
    name = str(_dig(params, "benchmark", "name"))
    options = _dig(params, "benchmark", "options") or {}
    # bbh:<task> takes bbh's options, as BenchmarkParams.benchmark_options does.
    entry = options.get(name) or options.get(name.split(":", 1)[0]) if isinstance(options, dict) else None
    generator = None
    if entry is not None:
        generator = entry.get("seed") if isinstance(entry, dict) else getattr(entry, "seed", None)
    return generator, _dig(params, "ingest", "seed")


def data_seed_label(params: dict[str, Any]) -> str | None:
    """``data seed 7`` (generator and split seed equal, or only one set), ``data seed 7/3``
    (generator 7, split 3) or None when neither is set."""
    seeds = [s for s in data_seeds(params) if s is not None]
    if not seeds:
        return None
    return f"data seed {seeds[0]}" if len(set(seeds)) == 1 else f"data seed {seeds[0]}/{seeds[1]}"


def runner_class_name(runner: Any) -> str:
    """The class name from Kedro's ``runner`` run param, ``<kedro.runner.X object at 0x..>``.

    Kedro passes ``str(runner)`` of the instance, which kedro-mlflow logs as the ``runner`` tag.
    """
    text = str(runner)
    if text == "None":  # KedroSession.run() without a runner uses a SequentialRunner
        return "SequentialRunner"
    match = re.fullmatch(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", text)
    return match.group(1).rsplit(".", 1)[-1] if match else text


def _dig(params: dict[str, Any], *keys: str) -> Any:
    """``params[k1][k2]``, or a flattened ``params["k1.k2"]``, or None.

    A block may be a typed object (Kedro validates params into the pydantic models that nodes
    are annotated with), so attributes count as keys.
    """
    value: Any = params
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif not isinstance(value, dict) and hasattr(value, key):
            value = getattr(value, key)
        else:
            return params.get(".".join(keys))
    return value


def ensure_experiment_kind(client: Any, name: str, artifact_location: str | None = None) -> str:
    """Create experiment ``name`` if missing, mark it a machine-learning one; return its id.

    Idempotent: the tag is written only when it differs.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location)
        tags: dict[str, str] = {}
    else:
        experiment_id, tags = experiment.experiment_id, experiment.tags
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a later run can tell whether it is still alive."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    start = _proc_start_ticks(os.getpid())
    if start is not None:
        tags[PID_START_TAG] = start
    return tags


def _proc_start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot (Linux /proc), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of stat(5); fields start at 3


def pid_alive(pid: int, start_ticks: str | None = None) -> bool:
    """Whether process ``pid`` on this host still runs (and is the same process, if known)."""
    if pid <= 0:
        return True  # not a process id we wrote: do not judge it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if start_ticks is not None:
        now = _proc_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by a newer process
    return True


def close_stale_runs(
    client: Any, experiment_id: str, exclude_run_id: str | None = None
) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` whose process on this host is gone.

    Runs from another host, or without the pid tags (made before this hook existed, or by
    another tool), are left alone: nothing here can tell whether they are still alive.
    """
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    closed = []
    for run in runs:
        tags = run.data.tags
        if run.info.run_id == exclude_run_id or tags.get(HOST_TAG) != host:
            continue
        try:
            pid = int(tags[PID_TAG])
        except (KeyError, ValueError):
            continue
        if pid_alive(pid, tags.get(PID_START_TAG)):
            continue
        client.set_tag(run.info.run_id, END_REASON_TAG, f"process {pid} on {host} was gone")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    if closed:
        logger.info("Marked %d stale MLflow run(s) KILLED: %s", len(closed), ", ".join(closed))
    return closed


#: Environment variable holding the id of the MLflow run that a ``kedro run`` is a child of: set
#: by ``impetus.framework.replicate`` for each seed, read by the run lifecycle hook.
PARENT_RUN_ENV = "IMPETUS_MLFLOW_PARENT_RUN_ID"
#: The tag the MLflow UI nests runs by (``mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID``).
PARENT_RUN_TAG = "mlflow.parentRunId"
#: Input tag naming the role of a logged dataset (``mlflow.log_input``'s ``context``).
DATASET_CONTEXT_TAG = "mlflow.data.context"


def link_to_parent(client: Any, run_id: str, parent_run_id: str | None = None) -> str | None:
    """Tag ``run_id`` as a child of ``parent_run_id`` (default: ``$IMPETUS_MLFLOW_PARENT_RUN_ID``).

    Returns the parent's id, or None when there is none (or it is the run itself).
    """
    parent = parent_run_id if parent_run_id is not None else os.environ.get(PARENT_RUN_ENV)
    if not parent or parent == run_id:
        return None
    client.set_tag(run_id, PARENT_RUN_TAG, parent)
    return parent


def problems_dataset_name(params: dict[str, Any], split: str) -> str:
    """``arith eval · data seed 7``: what the runs table's Dataset column shows for a split."""
    label = data_seed_label(params)
    name = f"{_dig(params, 'benchmark', 'name') or 'problems'} {split}"
    return f"{name} · {label}" if label else name


def log_problems_input(
    client: Any, run_id: str, problems: Any, split: str, params: dict[str, Any], source: str | None = None
) -> Any:
    """Log a problems table as a dataset input of ``run_id`` with context ``split``.

    MLflow stores its name, digest (of the content), schema and row count, not the rows, so the
    runs table says which problems a run measured and two runs on the same problems share a digest.
    ``source`` is the table's file (made absolute, so the UI's link does not depend on the cwd).
    """
    import warnings
    from pathlib import Path

    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    uri = Path(source).resolve().as_uri() if source else None
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both are local
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(problems, source=uri, name=problems_dataset_name(params, split))
    entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT_TAG, split)])
    client.log_inputs(run_id, datasets=[entity])
    return dataset
