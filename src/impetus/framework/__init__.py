"""The Kedro/MLflow glue, apart from the Kedro-free core (``impetus.<area>``).

- :mod:`.config`: the typed parameter schema (one class per ``parameters_<stage>.yml`` block),
  converted once into core values (``to_core()``).
- :mod:`.param_hooks`: validates every block before the first node runs.
- :mod:`.hooks`, :mod:`.mlflow_runs`: MLflow run lifecycle (names, store checks, killed runs).
- :mod:`.mlflow_models`, :mod:`.datasets`: custom Kedro datasets (MLflow EBM models, torch records).
- :mod:`.tracking`: report dicts flattened into MLflow metrics.

Kedro's ``settings.py`` and ``pipeline_registry.py`` stay in ``impetus`` where Kedro looks for them.
Nothing under ``impetus.<area>`` imports this package.
"""
