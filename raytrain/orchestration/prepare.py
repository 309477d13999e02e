"""Everything a run or sweep needs before any cluster time, and what both start with: checks
that fail fast, the data, the Ray connection, the MLflow run and the data's lineage."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from raytrain import tracking
from raytrain.cluster.connection import connect
from raytrain.cluster.placement import release_orphaned_placement_groups
from raytrain.cluster.resources import check_locality, cpus_on
from raytrain.cluster.storage_check import check_storage_on_nodes
from raytrain.config.loader import LoadedExperiment
from raytrain.config.schema import Experiment
from raytrain.data.dataset import Dataset, load_dataset
from raytrain.errors import TrackingError
from raytrain.secrets import mask_override
from raytrain.storage import check_writable, forwarded_env, is_gcs, join
from raytrain.tracking import names

__all__ = [
    "PreparedData",
    "log_lineage",
    "prepare",
    "spec_tracking_uri",
    "start_tracking",
    "storage_root",
    "unique_name",
]

log = logging.getLogger(__name__)

# What a run or sweep trains on: the data read on the driver (in memory), or its streams.
PreparedData = Dataset


def prepare(
    spec: Experiment,
    tracking_uri: str | None,
    *,
    address: str | None,
    verbose: bool,
    on_notice: Callable[[str], None] | None = None,
) -> PreparedData:
    """Everything that can fail fast, before any cluster time: tracking, data, then Ray
    (``on_notice`` hears which Ray instance, when it is one found running)."""
    from raytrain.cluster.connection import WORKER_ENV

    check_writable(spec.storage, what="storage")
    if spec.export is not None and spec.export.out:
        from raytrain.export.destination import check_destination

        check_writable(spec.export.out, what="export.out")
        check_destination(spec.export.out)  # it holds nothing raytrain may not replace
    if tracking_uri:
        tracking.check_reachable(tracking_uri)
    if not spec.data.streaming:  # read here, before any cluster time; streamed data reads on Ray
        data = load_dataset(spec.data, loss=spec.train.loss)
    # Workers reach the same storage as this process (an emulator's address, when one is set).
    env = {**WORKER_ENV, **tracking.CLIENT_ENV, **forwarded_env()}
    cluster = connect(address, verbose=verbose, env_vars=env, on_notice=on_notice)
    if not cluster.started:  # a killed driver's leftovers would block this run
        release_orphaned_placement_groups()  # (none on an instance this run just started)
    check_locality(spec.data.locality_rule)
    check_storage_on_nodes(spec.storage, locality=spec.data.locality_rule)
    if spec.data.streaming:
        data = load_dataset(spec.data, loss=spec.train.loss, task_cpus=_data_task_cpus(spec))
    return data


def _data_task_cpus(spec: Experiment) -> float | None:
    """None (Ray Data's default CPU per task) when the training workers leave a CPU free where
    the data may be read (``data.locality`` nodes); else 0: a sweep fills the cluster with
    trials, and workers holding every CPU would starve the tasks that feed them (seen: a
    2-worker run on 2 CPUs waited forever)."""
    held = spec.scaling.num_workers * spec.worker_resources().get("CPU", 0.0)
    spare = cpus_on(spec.data.locality_rule) - held
    return None if spec.tune is None and spare >= 1 else 0


def spec_tracking_uri(spec: Experiment) -> str | None:
    return tracking.absolute_tracking_uri(spec.tracking.uri) if spec.tracking.enabled else None


def storage_root(storage: str, name: str) -> str:
    if storage.startswith("gs://"):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def start_tracking(loaded: LoadedExperiment, run_name: str) -> tracking.TrackedRun:
    """The run's MLflow run. Everything stored there is masked: a run that needs the real
    experiment again (a resumed sweep) reads it from its storage folder, never from MLflow."""
    spec = loaded.spec
    overrides = " ".join(mask_override(item) for item in loaded.overrides)
    try:
        return tracking.start_run(
            uri=tracking.absolute_tracking_uri(spec.tracking.uri),
            experiment=spec.experiment_name,
            run_name=run_name,
            spec=spec.model_dump(mode="json"),
            tags={**spec.tracking.tags, names.OVERRIDES_TAG: overrides},
            description=spec.description,
            spec_file=loaded.path,
            artifact_location=_artifact_location(spec),
            swept=tuple(spec.tune.space) if spec.tune else (),
        )
    except TrackingError:
        raise
    except Exception as exc:  # MLflow raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow ({spec.tracking.uri}): {first}") from None


def _artifact_location(spec: Experiment) -> str | None:
    """With gs:// storage and a tracking store on this machine (sqlite, a folder), a new MLflow
    experiment keeps its artifacts (models, spec files) in the bucket beside the checkpoints.
    A tracking server keeps them where the server is configured to."""
    uri = spec.tracking.uri
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if not is_gcs(spec.storage) or scheme not in ("", "sqlite", "file"):
        return None
    return join(spec.storage, "mlflow", spec.experiment_name)


def log_lineage(tracked: tracking.TrackedRun | None, spec: Experiment, data: PreparedData) -> None:
    """The run's training, validation and test data, as MLflow dataset inputs (metadata only:
    sources, digests, schema, row counts). A run is not stopped for its lineage."""
    if tracked is None:
        return
    from raytrain.data.lineage import describe
    from raytrain.tracking.lineage import log_datasets

    try:
        log_datasets(tracked, describe(spec.data, data))
    except Exception as exc:
        log.warning("the dataset lineage was not logged (training goes on): %s", exc)
