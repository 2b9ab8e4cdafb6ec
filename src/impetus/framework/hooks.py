"""Project hooks: fail fast on an unusable MLflow store, and keep MLflow runs honest.

Order matters: Kedro calls hook implementations of plugins (kedro-mlflow's ``MlflowHook``) before
the project's ones of the same priority, and ``tryfirst``/``trylast`` override that.
``MlflowStoreCheckHook`` must run before kedro-mlflow opens the store (``tryfirst``);
``MlflowRunLifecycleHook.before_pipeline_run`` must run after kedro-mlflow started the run
(``trylast``), since it renames and tags that run.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from kedro.framework.hooks import hook_impl

from impetus.framework.mlflow_runs import (  # noqa: F401  (re-exported: the hook's vocabulary)
    END_REASON_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HOST_TAG,
    PARENT_RUN_ENV,
    PARENT_RUN_TAG,
    PID_START_TAG,
    PID_TAG,
    build_run_name,
    close_stale_runs,
    ensure_experiment_kind,
    link_to_parent,
    log_problems_input,
    pid_alive,
    process_tags,
    runner_class_name,
)

logger = logging.getLogger(__name__)

_FIX = "Fix: make it writable (chmod u+w, or chown to the user running kedro)"
#: Catalog entries logged as the run's MLflow dataset inputs, with the split as context.
PROBLEM_SPLITS = {f"problems_{split}": split for split in ("train", "dev", "eval")}


class MlflowStoreError(RuntimeError):
    """The MLflow tracking store named in conf/<env>/mlflow.yml cannot be opened or written."""


class MlflowStoreCheckHook:
    """Fail at once, with a clear message, when the MLflow store cannot be opened or written.

    Without this, a bad or read-only ``mlflow_tracking_uri`` surfaces as a 600-line SQLAlchemy
    traceback deep inside kedro-mlflow, or only when the first metric is logged after minutes of
    sampling.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        try:
            conf = context.config_loader["mlflow"]
        except Exception:  # no mlflow.yml in this env: kedro-mlflow's defaults apply
            return
        uri = (conf.get("server") or {}).get("mlflow_tracking_uri")
        experiment = (conf.get("tracking") or {}).get("experiment") or {}
        artifacts = (experiment.get("create_experiment_kwargs") or {}).get("artifact_location")
        if uri:
            check_tracking_store(
                uri,
                artifact_location=artifacts,
                experiment_name=experiment.get("name"),
                project_path=getattr(context, "project_path", None),
            )


def check_tracking_store(
    uri: str,
    artifact_location: str | None = None,
    experiment_name: str | None = None,
    project_path: str | Path | None = None,
) -> None:
    """Check that ``uri`` can be opened and written; raise :class:`MlflowStoreError` if not.

    For a sqlite store the database file and its folder must be writable (sqlite writes a journal
    beside the file). ``artifact_location`` (relative to ``project_path``, as kedro-mlflow resolves
    it) and the stored artifact folder of ``experiment_name``, if local, must be writable too.
    Writability is probed with a real write, since ``os.access`` says yes to root for any mode.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # sqlite:///rel/path (from the cwd) or sqlite:////abs/path
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        hint = f"or point server.mlflow_tracking_uri in conf/<env>/mlflow.yml elsewhere ({uri!r})"
        _require_writable_dir(db.parent, f"MLflow store folder {db.parent}", hint)
        if db.exists():
            _require_writable_file(db, f"MLflow database {db}", hint)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # mlflow raises many types (MlflowException, OperationalError, ...)
        raise MlflowStoreError(
            f"Cannot open the MLflow tracking store {uri!r}: {exc}. "
            "Check server.mlflow_tracking_uri in conf/base/mlflow.yml."
        ) from exc
    hint = (
        "or change tracking.experiment.create_experiment_kwargs.artifact_location "
        "in conf/<env>/mlflow.yml (existing experiments keep the folder they were created with)"
    )
    folders = []
    if artifact_location:
        folders.append(_local_path(artifact_location, project_path))
    if experiment_name:  # artifacts go where the experiment was created, whatever mlflow.yml says
        found = _quietly(lambda: client.get_experiment_by_name(experiment_name))
        if found is not None:
            folders.append(_local_path(found.artifact_location, project_path))
    for folder in dict.fromkeys(f for f in folders if f is not None):
        _require_writable_dir(folder, f"MLflow artifact folder {folder}", hint)


def _local_path(location: str, base: str | Path | None = None) -> Path | None:
    """``location`` (a path or a ``file:`` URI) as a local path; None for remote ones (s3, http)."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        path = Path(url2pathname(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # C:\... on Windows
        path = Path(location)
    else:
        return None
    return path if path.is_absolute() or base is None else Path(base) / path


def _require_writable_dir(folder: Path, what: str, hint: str) -> None:
    """Create ``folder`` if needed and write a probe file in it, else raise MlflowStoreError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".impetus-write-probe-"):
            pass
    except OSError as exc:
        raise MlflowStoreError(f"{what} is not writable ({exc}). {_FIX} {hint}.") from exc


def _require_writable_file(path: Path, what: str, hint: str) -> None:
    """Open ``path`` for update without changing it, or raise :class:`MlflowStoreError`."""
    try:
        if not os.access(path, os.W_OK):
            raise PermissionError(f"no write permission on {path}")
        with open(path, "r+b"):
            pass
    except OSError as exc:
        raise MlflowStoreError(f"{what} is read-only ({exc}). {_FIX} {hint}.") from exc


def _quietly(call: Any, what: str | None = None) -> Any:
    """``call()``, or None if it raises (logged as a warning when ``what`` names the step).

    For optional steps: a run name or an extra check must not fail a run or mask the real error.
    """
    try:
        return call()
    except Exception as exc:
        if what:
            logger.warning("MLflow run hygiene: could not %s: %s", what, exc)
        return None


class MlflowRunLifecycleHook:
    """Name, tag and close the MLflow run that kedro-mlflow opens for each ``kedro run``.

    - names the run after pipeline, env, benchmark, model, data seed and sampling seed, and makes
      the ``runner`` tag a class name (Kedro hands kedro-mlflow the runner object's repr);
    - makes it a child of ``$IMPETUS_MLFLOW_PARENT_RUN_ID`` when set (``make replicate``);
    - logs the problems it measures (``problems_train/dev/eval``) as MLflow dataset inputs, when
      the pipeline saves them (ingest ran) or reads them (ingest ran before), so the runs table's
      Dataset column says what was measured;
    - tags the experiment as a machine-learning one for the MLflow 3 UI;
    - tags the run with pid and host, and marks earlier RUNNING runs whose process is gone KILLED;
    - on a pipeline error marks the run FAILED (kedro-mlflow does too; this also covers the case
      where its handler fails), and on SIGTERM, Ctrl-C or any other exit before the end KILLED
      (by default MLflow's own atexit handler would mark such a run FINISHED). A SIGKILL cannot be
      caught: the next run's sweep closes that one.
    """

    def __init__(self) -> None:
        self._default_env = "local"
        self._ui = "http://127.0.0.1:5000"
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._tracking_uri: str | None = None
        self._error: BaseException | None = None
        self._params: dict[str, Any] = {}
        self._catalog: Any = None
        self._sigterm = False
        self._armed = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        loader = getattr(context, "config_loader", None)
        self._default_env = getattr(loader, "default_run_env", None) or "local"
        ui = (_quietly(lambda: loader["mlflow"]) or {}).get("ui") or {}
        self._ui = f"http://{ui.get('host') or '127.0.0.1'}:{ui.get('port') or 5000}"

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        active = mlflow.active_run()
        if active is None:  # tracking disabled for this pipeline in mlflow.yml
            return
        run_id, experiment_id = active.info.run_id, active.info.experiment_id
        client = MlflowClient()
        names = run_params.get("pipeline_names") or run_params.get("pipeline_name")
        names = names or ["__default__"]  # kedro-mlflow's own fallback for its run name
        pipeline_name = names if isinstance(names, str) else "+".join(names)
        tags = process_tags()
        if run_params.get("runner"):
            tags["runner"] = runner_class_name(run_params["runner"])

        params = _quietly(lambda: catalog.load("parameters")) or {}

        def name_run() -> None:
            # Rename only kedro-mlflow's default name (the pipeline name): a name set in mlflow.yml
            # or by an orchestrator that opened the run itself is kept.
            if active.info.run_name == pipeline_name:
                env = run_params.get("env") or self._default_env
                client.update_run(run_id, name=build_run_name(pipeline_name, env, params))

        # None of this is worth failing a run over: each step only logs a warning.
        _quietly(lambda: [client.set_tag(run_id, k, v) for k, v in tags.items()], "tag the run")
        _quietly(name_run, "name the run")
        experiment_name = _quietly(lambda: client.get_experiment(experiment_id).name, "read")
        _quietly(lambda: ensure_experiment_kind(client, experiment_name), "set the kind")
        _quietly(lambda: close_stale_runs(client, experiment_id, run_id), "close stale runs")
        _quietly(lambda: link_to_parent(client, run_id), "link the run to its parent")
        self._experiment_id = experiment_id
        self._arm(run_id, mlflow.get_tracking_uri())
        self._params, self._catalog = params, catalog
        # Problems made by an earlier run (ingest not in this pipeline) are logged now; those this
        # run makes, once saved (after_dataset_saved).
        inputs = _quietly(lambda: pipeline.inputs()) or set()
        for name in sorted(set(PROBLEM_SPLITS) & set(inputs)):
            data = _quietly(lambda: catalog.load(name), f"load {name}")
            if data is not None:
                self._log_problems(name, data)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        if self._armed and dataset_name in PROBLEM_SPLITS:
            self._log_problems(dataset_name, data)

    def _log_problems(self, dataset_name: str, data: Any) -> None:
        """Log one problems table as a dataset input of the run (a warning if that fails)."""
        catalog = self._catalog
        source = _quietly(lambda: str(catalog.get(dataset_name)._filepath))
        _quietly(
            lambda: log_problems_input(
                self._client(), self._run_id, data, PROBLEM_SPLITS[dataset_name], self._params, source
            ),
            f"log {dataset_name} as a dataset input",
        )

    @hook_impl(tryfirst=True)
    def on_pipeline_error(
        self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any
    ) -> None:
        """Record the error and mark the run FAILED; kedro-mlflow then ends its fluent run."""
        if not self._armed:  # this pipeline was not tracked
            return
        self._error = error
        client = self._client()
        reason = f"{type(error).__name__}: {error}"[:5000]  # MLflow caps tag values at 8000
        _quietly(lambda: client.set_tag(self._run_id, END_REASON_TAG, reason))
        if _quietly(lambda: client.get_run(self._run_id).info.status) == "RUNNING":
            client.set_terminated(self._run_id, "FAILED")

    def _leave_run(self, status: str) -> None:
        """Pop this run from MLflow's active-run stack of the thread (see after_pipeline_run)."""
        import mlflow

        while (active := mlflow.active_run()) is not None and active.info.run_id == self._run_id:
            mlflow.end_run(status=status)

    @hook_impl(trylast=True)  # after kedro-mlflow's after_pipeline_run has ended the run
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        # kedro-mlflow re-enters the run before each node, which stacks it again in this thread,
        # and ends it once: the leftover entry made the next KedroSession of the same process
        # (a notebook, a test) log into this finished run instead of a new one. Same after an error.
        self._leave_run("FINISHED")
        if self._armed:
            uri = self._tracking_uri or ""
            base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else self._ui
            # The parameter makes MLflow 3.17 open the runs table, not the empty GenAI overview.
            logger.info(
                "MLflow runs (make mlflow-ui): %s/#/experiments/%s?workflowType=machine_learning",
                base,
                self._experiment_id,
            )
        self.disarm()

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self._tracking_uri)  # the global URI may have moved on

    def _arm(self, run_id: str, tracking_uri: str) -> None:
        """Close the run at exit or on SIGTERM unless the pipeline finishes first."""
        self.disarm()
        self._run_id, self._tracking_uri = run_id, tracking_uri
        self._error, self._sigterm = None, False
        atexit.register(self._at_exit)
        # Only replace the default handler, and only from the main thread (signal's own rule);
        # SIGTERM becomes SystemExit, so the stack unwinds (locks, files) and _at_exit runs.
        try:
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:
            pass
        self._armed = True

    def disarm(self) -> None:
        """Forget the run: no exit or SIGTERM handling (called when the pipeline has finished)."""
        if not self._armed:
            return
        atexit.unregister(self._at_exit)
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass
        self._armed = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        self._sigterm = True
        raise SystemExit(128 + signum)  # 143, the exit status a shell reports for SIGTERM

    def _at_exit(self) -> None:
        """Close a run the pipeline did not finish: FAILED after an error, KILLED otherwise."""
        import mlflow

        try:
            client = self._client()
            status = client.get_run(self._run_id).info.status
            if status == "RUNNING":
                status = "FAILED" if self._error is not None else "KILLED"
                reason = "SIGTERM" if self._sigterm else "process exited before the end"
                client.set_tag(self._run_id, END_REASON_TAG, reason)
            # Pop the run from MLflow's stack with its status kept: MLflow's own atexit handler
            # (which runs after this one) would otherwise end it FINISHED.
            while (run := mlflow.active_run()) is not None and run.info.run_id == self._run_id:
                mlflow.end_run(status)
            if client.get_run(self._run_id).info.status == "RUNNING":
                client.set_terminated(self._run_id, status)
        except Exception as exc:  # at exit, a log line is all that can be done
            logger.warning("Could not close MLflow run %s at exit: %s", self._run_id, exc)
