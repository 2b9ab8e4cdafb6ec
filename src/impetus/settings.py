"""Kedro project settings.

``${oc.env:VAR,default}`` is normally allowed only in credentials; we also allow it in parameters
so ``IMPETUS_SHARED_DATA`` can point the benchmarks at another data folder without editing YAML.
"""

import os
from kedro.config import OmegaConfigLoader

from impetus.hooks import MlflowStoreCheckHook

def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


HOOKS = (MlflowStoreCheckHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {
        "oc.env": _env,
    },
    # "soft": an env (local, test) overrides single keys of a base block instead of replacing it.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
