"""MLflow's private names: the entity of a dataset, for logging dataset inputs in one request.

Written for MLflow 3.17. ``mlflow.log_input`` logs one dataset per call on the active run; a run's
three splits in one ``MlflowClient.log_inputs`` request need each dataset as the entity that
``mlflow.log_input`` builds with the dataset's ``_to_mlflow_entity``.
"""

from __future__ import annotations

from typing import Any

from mlflow.data.dataset import Dataset

from raytrain.shims.check import require

__all__ = ["WRITTEN_FOR", "dataset_entity"]

WRITTEN_FOR = "mlflow 3.17"
_to_entity = require(Dataset, "_to_mlflow_entity", shim=__name__, written_for=WRITTEN_FOR)


def dataset_entity(dataset: Dataset) -> Any:
    """``mlflow.entities.Dataset`` of an ``mlflow.data`` dataset."""
    return _to_entity(dataset)
