"""Read tracked runs back from MLflow into pandas, the input of every report."""

from __future__ import annotations

from typing import Any

from fedbench.tracking import MlflowTracker  # noqa: F401  (sets MLflow's quiet defaults)


def load_runs(experiment: str = "fedbench", tracking_uri: str | None = None) -> Any:
    """One row per run: ``params.*``, ``tags.*`` and the last value of every ``metrics.*``."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment])


def load_history(run_id: str, key: str, tracking_uri: str | None = None) -> Any:
    """Per-round values of one metric of one run, as a DataFrame with columns ``round`` and ``value``."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, key)
    return pd.DataFrame({"round": [m.step for m in history], "value": [m.value for m in history]})
