"""Dataset lineage in MLflow: each split a run used, through MLflow's dataset API (the run
page's "Datasets used"), as metadata only: its source, digest, schema and row count.

The records come from ``raytrain.data.lineage`` (any object with its fields will do: tracking
does not import data). MLflow stores them as dataset inputs of the run, with the context
(training, validation, test) as the input's ``mlflow.data.context`` tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from raytrain.tracking.runs import TrackedRun

__all__ = ["DATASET_SOURCE_TYPES", "log_datasets"]

# Source types shown in MLflow's UI, by the start of a source.
DATASET_SOURCE_TYPES = {"builtin:": "builtin", "gs://": "gs"}


def log_datasets(run: TrackedRun, records: Sequence[Any]) -> None:
    """Log ``records`` (``DatasetRecord``s) as the run's dataset inputs, in one request."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from raytrain.shims.mlflow import dataset_entity

    inputs = [
        DatasetInput(
            dataset=dataset_entity(_dataset(record)),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, record.context)],
        )
        for record in records
    ]
    mlflow.MlflowClient(tracking_uri=run.uri).log_inputs(run.run_id, datasets=inputs)


def _dataset(record: Any) -> Any:
    import numpy as np
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    class Location(DatasetSource):
        """Where a split's files are; MLflow never loads them (``load`` refuses)."""

        def __init__(self, uri: str) -> None:
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return next(
                (kind for start, kind in DATASET_SOURCE_TYPES.items() if uri.startswith(start)),
                "local",
            )

        def load(self) -> Any:
            raise NotImplementedError("raytrain records where data is, not the data")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> Any:
            return cls(source_dict["uri"])

    class Described(MetaDataset):
        """A MetaDataset with a profile: row and file counts, bytes, what the digest hashes."""

        @property
        def profile(self) -> dict[str, Any]:
            return {
                "num_rows": record.rows,
                "num_files": record.files,
                "bytes": record.bytes,
                "digest_of": record.digest_of,
                **{k: v for k, v in record.schema.items() if k in ("label", "classes")},
            }

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    uri = record.source
    shape = (-1, *record.schema.get("input_shape", []))
    schema = Schema([TensorSpec(np.dtype(np.float32), shape, "features")])
    return Described(Location(uri), name=record.name, digest=record.digest, schema=schema)
