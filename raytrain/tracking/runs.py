"""MLflow: one run per training run, metrics logged live as epochs commit, the model as an
artifact.

The driver opens the run (params, tags, spec file) and closes it (model, registration, status);
Ray Train's controller logs each committed epoch's metrics into it while training runs. A
tracking failure during training is logged as a warning and never stops training: each epoch's
metrics are also kept with the run's checkpoints, and ``log_missing_epochs`` sends what MLflow
missed once it is back (``raytrain resume``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from raytrain.errors import TrackingError
from raytrain.secrets import mask_text, mask_tree
from raytrain.tracking import credentials, names

__all__ = [
    "CLIENT_ENV",
    "EPOCH_METRIC",
    "EpochLogger",
    "TrackedRun",
    "absolute_tracking_uri",
    "bound_client",
    "check_reachable",
    "child_runs",
    "end_run",
    "flatten",
    "log_metrics",
    "log_missing_epochs",
    "log_model",
    "promote_champion",
    "start_run",
    "tag_run",
    "ui_command",
]

log = logging.getLogger(__name__)

# MLflow's HTTP client waits up to 120 s for an answer and retries a failed request 7 times with
# exponential backoff (MLFLOW_HTTP_REQUEST_* in mlflow/environment_variables.py): minutes per
# call on a dead server (seen: a run whose server died after epoch 1 still waited 30 minutes
# later). Bounded here to ~3 s per call on a refused connection, 10 s per answer; values the
# user set win. What a call cannot log stays in the run's storage folder for ``raytrain resume``.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
# MLflow prints "View run NAME at: URL" as each run ends, URL being the tracking URI with its
# user-info, password included; raytrain shows its own link, masked (``ui_command``).
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
EPOCH_METRIC = "epoch"  # every epoch logs it, last: MLflow has an epoch when it has this step


def bound_client() -> None:
    """Bound this process's MLflow HTTP calls (``CLIENT_ENV``), except where the user set them.
    MLflow reads the variables at each request."""
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class TrackedRun:
    uri: str
    experiment_name: str
    experiment_id: str
    run_id: str


def absolute_tracking_uri(uri: str) -> str:
    """Make a relative sqlite/file URI absolute: Ray workers run in another working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def check_reachable(uri: str, *, timeout_s: float = 5.0) -> None:
    """Fail in seconds, before any cluster time is spent, if the tracking store is unusable.

    MLflow's own client retries an unreachable server for minutes before it gives up; a server
    that wants a sign-in answers 401, which is said here in one line with what to set.
    """
    if uri.startswith(("http://", "https://")):
        import requests

        signed_in = credentials.current()
        try:
            answer = requests.get(
                f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                auth=signed_in.auth if signed_in else None,
                # The cluster's own CA for an HTTPS server (~/.mlflow/ca.pem), else the system's.
                verify=credentials.server_cert() or True,
                # Seconds to connect; a server that answers slowly (checking a password costs
                # it CPU) is given longer.
                timeout=(timeout_s, 60),
            )
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, "
                "fix tracking.uri, or set tracking.enabled: false"
            ) from None
        if answer.status_code == 401:
            raise TrackingError(credentials.sign_in_help(uri, signed_in))
    elif uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        folder = database.parent
        writable = folder.is_dir() and os.access(folder, os.W_OK)
        if database.exists():
            writable = database.is_file() and os.access(database, os.W_OK)
        if not writable:
            raise TrackingError(
                f"tracking.uri '{uri}': cannot write the MLflow database {database} (its folder "
                "must exist and be writable, and the database must be a writable file)"
            )


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}``: MLflow params are flat."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if isinstance(tree, list) else str(tree)}


def start_run(
    *,
    uri: str,
    experiment: str,
    run_name: str,
    spec: dict[str, Any],
    tags: dict[str, str],
    spec_file: Path | None,
    description: str = "",
    artifact_location: str | None = None,
    swept: list[str] | tuple[str, ...] = (),
) -> TrackedRun:
    """Create the run (and its experiment) with the experiment ``spec`` (a resolved
    experiment, as JSON-like data) as params and artifacts, and ``tags``; secrets masked.

    ``swept``: a sweep's swept paths. Its parent run does not carry their base values as params
    (no trial trained with them, and MLflow's charts would draw the parent as one more trial);
    it lists them in a tag instead, the params that compare its trials.

    ``artifact_location`` applies only when the experiment is new: MLflow fixes an
    experiment's artifact root when it creates it.
    """
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(
            experiment,
            artifact_location=artifact_location,
            tags={names.EXPERIMENT_KIND_TAG: names.EXPERIMENT_KIND},
        )
    )
    spec = mask_tree(spec)
    spec_text = yaml.safe_dump(spec, sort_keys=False)
    spec_hash = hashlib.sha256(spec_text.encode()).hexdigest()[:12]
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={**_version_tags(spec_file), names.SPEC_HASH_TAG: spec_hash, **mask_tree(tags)},
    )
    run_id = run.info.run_id
    if swept:
        client.set_tag(run_id, names.SWEPT_TAG, ", ".join(swept))
    params = {
        k: v
        for k, v in flatten(spec).items()
        if not any(k == path or k.startswith(f"{path}.") for path in swept)
    }
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])
    client.log_text(run_id, spec_text, names.SPEC_ARTIFACT)
    original = _masked_file(spec_file) if spec_file is not None else None
    if spec_file is not None and original is not None:
        client.log_text(run_id, original, f"{names.SPEC_FOLDER}/{spec_file.name}")
    if description:
        client.set_tag(run_id, names.NOTE_TAG, mask_text(description))  # the UI's description
    return TrackedRun(
        uri=uri, experiment_name=experiment, experiment_id=experiment_id, run_id=run_id
    )


def _masked_file(path: Path) -> str | None:
    """The user's experiment file as it may be stored beside the resolved one: masked, and
    only when its masked text still parses to the masked experiment (a secret in a YAML form
    the text rule does not read, e.g. a block list under a secret key, keeps it out)."""
    if not path.is_file():
        return None
    text = path.read_text()
    masked = mask_text(text)
    try:
        same = yaml.safe_load(masked) == mask_tree(yaml.safe_load(text))
    except yaml.YAMLError:
        same = False
    if not same:
        log.warning("%s is not logged to MLflow: its secrets could not be masked", path.name)
    return masked if same else None


def child_runs(client: Any, experiment_id: str, parent_id: str, *, trial_id: str = "") -> list[Any]:
    """A sweep's trial runs (all, or the one of ``trial_id``): nested under its parent run."""
    where = f"tags.`{names.PARENT_TAG}` = '{parent_id}'"
    if trial_id:
        where += f" and tags.`{names.TRIAL_ID_TAG}` = '{trial_id}'"
    return cast(list[Any], client.search_runs([experiment_id], filter_string=where))


def end_run(
    run: TrackedRun,
    *,
    status: str,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    step: int = 0,
) -> None:
    """Close the run as FINISHED, FAILED or KILLED, with its last tags and metrics in one batch."""
    import mlflow
    from mlflow.entities import RunTag

    client = mlflow.MlflowClient(tracking_uri=run.uri)
    if tags or metrics:
        batch = _metrics(metrics or {}, step)
        masked = mask_tree(tags or {})
        client.log_batch(run.run_id, metrics=batch, tags=[RunTag(k, v) for k, v in masked.items()])
    client.set_terminated(run.run_id, status=status)


def reopen_run(run: TrackedRun) -> None:
    """Mark a run RUNNING again: a sweep that is resumed or extended keeps its parent run."""
    import mlflow

    mlflow.MlflowClient(tracking_uri=run.uri).update_run(run.run_id, status="RUNNING")


def log_model(
    run: TrackedRun,
    model: Any,
    *,
    example: Any,
    metadata: dict[str, Any],
    register_as: str | None,
) -> str | None:
    """Log a tf_keras model in MLflow's tensorflow flavor; return the registered version, if any."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example, verbose=0))
    mlflow.set_tracking_uri(run.uri)
    with mlflow.start_run(run_id=run.run_id):
        info = mlflow.tensorflow.log_model(
            model,
            name=names.MODEL_ARTIFACT,
            signature=signature,
            metadata=mask_tree(metadata),
            registered_model_name=register_as,
            pip_requirements=_model_requirements(),
            # The zip format whatever thread logs it (raytrain.train.checkpoint.write says why).
            keras_model_kwargs={"save_format": "keras_v3"},
        )
    version = info.registered_model_version
    return str(version) if version is not None else None


# What MLflow's tensorflow flavor writes to a tf_keras model's requirements.txt when it infers
# them, which it does by loading the model in a new Python process that imports TensorFlow again:
# seconds after every run (benchmarks/README.md, small_run). Pinned here to this process's versions.
_MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "tensorflow", "tf-keras")


def _model_requirements() -> list[str]:
    """``_MODEL_REQUIREMENTS`` pinned to the installed versions (those installed only)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in _MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def log_metrics(run: TrackedRun, metrics: dict[str, float], *, step: int) -> None:
    """Log several metrics at one step in one request."""
    import mlflow

    batch = _metrics(metrics, step)
    mlflow.MlflowClient(tracking_uri=run.uri).log_batch(run.run_id, metrics=batch)


def log_missing_epochs(run: TrackedRun, epochs: list[dict[str, float]]) -> list[int]:
    """Log the epochs (each with its ``epoch`` number) that MLflow lacks: what the run could not
    log while its server was away, or sent by a driver that died first. Returns their numbers."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=run.uri)
    have = {m.step for m in client.get_metric_history(run.run_id, EPOCH_METRIC)}
    missing = [e for e in epochs if int(e[EPOCH_METRIC]) not in have]
    batch = [m for e in missing for m in _metrics(e, int(e[EPOCH_METRIC]))]
    for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run.run_id, metrics=batch[start : start + 1000])
    return [int(e[EPOCH_METRIC]) for e in missing]


def _metrics(metrics: dict[str, float], step: int) -> list[Any]:
    """MLflow metrics at ``step``, ``EPOCH_METRIC`` last: an epoch cut short in a failed batch
    does not count as logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    keys = sorted(metrics, key=lambda k: k == EPOCH_METRIC)
    return [Metric(k, float(metrics[k]), now, step) for k in keys]


def promote_champion(
    uri: str, name: str, version: str, *, metric: str, mode: str, value: float
) -> tuple[bool, str]:
    """Point the alias ``champion`` at ``version`` only if it beats the current champion."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    client.set_model_version_tag(name, version, names.metric_tag(metric), str(value))
    try:
        current = client.get_model_version_by_alias(name, names.CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and str(current.version) == version:
        return False, f"{name} version {version} ({metric} {value:.4g}) stays '{names.CHAMPION}'"
    if current is not None:
        held = current.tags.get(names.metric_tag(metric))
        if held is not None:
            old = float(held)
            better = value > old if mode == "max" else value < old
            if not better:
                return False, (
                    f"{name} version {version} ({metric} {value:.4g}) does not beat the champion, "
                    f"version {current.version} ({metric} {old:.4g}): champion unchanged"
                )
    client.set_registered_model_alias(name, names.CHAMPION, version)
    return True, f"{name} version {version} ({metric} {value:.4g}) is now '{names.CHAMPION}'"


class EpochLogger:
    """Sends each epoch's metrics into the driver's run from a thread of its own (on Ray Train's
    controller): training never waits on the server. After a failed send, the epochs of the next
    ``pause_s`` seconds are not tried (each would cost the client's retries on a dead server).
    ``unlogged``: the epochs MLflow did not get; ``log_missing_epochs`` sends them later."""

    def __init__(self, run: TrackedRun, *, pause_s: float = 30.0) -> None:
        bound_client()
        self.run, self.pause_s = run, pause_s
        self.unlogged: list[int] = []
        self._queue: queue.Queue[tuple[dict[str, float], int]] = queue.Queue()
        self._retry_at = 0.0
        threading.Thread(target=self._send_all, name="raytrain-mlflow", daemon=True).start()

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        self._queue.put((dict(metrics), step))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait, ``timeout_s`` at most, until each epoch so far was sent or given up."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks and time.monotonic() < deadline:
                self._queue.all_tasks_done.wait(max(0.0, deadline - time.monotonic()))

    def _send_all(self) -> None:
        while True:
            metrics, step = self._queue.get()
            try:
                if time.monotonic() < self._retry_at:
                    self.unlogged.append(step)
                else:
                    log_metrics(self.run, metrics, step=step)
            except Exception as exc:  # a lost chart must not cost the run
                self.unlogged.append(step)
                self._retry_at = time.monotonic() + self.pause_s
                reason = mask_text(str(exc))
                log.warning(
                    "MLflow logging failed at epoch %s (training goes on): %s", step, reason
                )
            finally:
                self._queue.task_done()


def tag_run(run: TrackedRun, key: str, value: str) -> None:
    """Set a tag, or log a warning: for code that must go on without MLflow (a worker)."""
    try:
        import mlflow

        bound_client()
        masked = mask_tree({key: value})[key]
        mlflow.MlflowClient(tracking_uri=run.uri).set_tag(run.run_id, key, masked)
    except Exception as exc:
        log.warning("MLflow tag %s failed (training goes on): %s", key, mask_text(str(exc)))


def ui_command(run: TrackedRun) -> str:
    """The command (or URL) that shows this run in the MLflow UI (secrets in the URI masked)."""
    if run.uri.startswith(("http://", "https://")):
        url = mask_text(run.uri.rstrip("/"))
        return f"{url}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    # Name the mlflow next to this Python when it is not on PATH (a venv that is not activated).
    mlflow_bin = (
        "mlflow" if shutil.which("mlflow") else str(Path(sys.executable).with_name("mlflow"))
    )
    return f"{mlflow_bin} ui --backend-store-uri {mask_text(run.uri)}"


def _version_tags(spec_file: Path | None) -> dict[str, str]:
    import ray

    from raytrain import __version__

    tags = {names.VERSION_TAG: __version__, "ray.version": ray.__version__}
    try:
        from importlib.metadata import version

        tags["tensorflow.version"] = version("tensorflow")
        tags["tf_keras.version"] = version("tf-keras")
    except Exception:
        pass
    commit = _git_commit(spec_file.parent if spec_file else Path.cwd())
    if commit:
        tags[names.GIT_COMMIT_TAG] = commit
    return tags


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
