"""Kedro project settings.

``${oc.env:VAR,default}`` is normally allowed only in credentials; we also allow it in parameters
so ``IMPETUS_SHARED_DATA`` can point the benchmarks at another data folder without editing YAML.
"""

import os
from kedro.config import OmegaConfigLoader

from impetus.framework.hooks import MlflowRunLifecycleHook, MlflowStoreCheckHook
from impetus.framework.param_hooks import TypedParamsHook

def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _abspath(path: str) -> str:
    """``path`` made absolute against the working directory (kedro runs in the project root).

    MLflow caches its sqlite store by URI string: a relative ``sqlite:///mlruns/mlflow.db`` would
    keep pointing at the first project's database in a process that opens a second project.
    """
    return os.path.abspath(path)


# kedro-mlflow's MlflowHook registers itself as a plugin; the order against it is set by
# tryfirst/trylast in impetus.framework.hooks, not by this tuple.
HOOKS = (MlflowStoreCheckHook(), MlflowRunLifecycleHook(), TypedParamsHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {
        "oc.env": _env,
        "abspath": _abspath,
    },
    # "soft": an env (local, test) overrides single keys of a base block instead of replacing it.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
