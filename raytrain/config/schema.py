"""The experiment schema: the contract between a user's YAML and every other module.

Every field is typed, defaulted and described; unknown keys are rejected. Loading (with line
numbers and ``--set`` overrides) lives in ``loader.py`` and rules that span several fields in
``rules.py`` and ``space_rules.py``, so this file reads as the reference of what an experiment
can say (``reference.py`` renders it for the docs).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from raytrain.config.locality import Locality
from raytrain.config.references import ReferenceProblem, resolve_references
from raytrain.secrets import is_secret_key

__all__ = [
    "BUILTIN_BUILDERS",
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING_URI",
    "EDGE_METRICS",
    "EDGE_MODES",
    "EXTRA_METRICS",
    "NAME_PATTERN",
    "REQUIRED",
    "CNNParams",
    "CheckpointSpec",
    "ConstraintSpec",
    "DataSpec",
    "Experiment",
    "ExportSpec",
    "FailureSpec",
    "HeldOutSpec",
    "MLPParams",
    "ModelSpec",
    "OptimizerSpec",
    "ScalingSpec",
    "SchedulerSpec",
    "SearchSpec",
    "TrackingSpec",
    "TrainSpec",
    "TuneSpec",
    "suggested_key",
    "unknown_key_message",
]

# Each choice list once, as a Literal (what the fields are typed as) and its values.
Loss = Literal[
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
]
LOSSES: tuple[Loss, ...] = get_args(Loss)
Metric = Literal[
    "accuracy",
    "sparse_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
    "mean_squared_error",
    "mean_absolute_error",
    "root_mean_squared_error",
    "auc",
    "precision",
    "recall",
]
METRICS: tuple[Metric, ...] = get_args(Metric)
CLASSIFICATION_LOSSES = LOSSES[:3]
# Reported every epoch besides the compiled metrics (raytrain/train/loop.py's _Reporter).
EXTRA_METRICS = ("epoch", "epoch_time_s", "samples_per_s", "param_count", "model_bytes")
DEFAULT_STORAGE = "./raytrain_results"  # relative to the working directory
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: ./mlflow.db
# A name that is one safe folder name: it names storage folders, so no "/", "..", or spaces.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
REQUIRED = ("name",)  # what an experiment must say; every other field has a default
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
# A registered model's name: MLflow refuses '/' and ':', raytrain's references use '@' and '/',
# and the model API puts it in URLs; MLflow keeps 255 characters of an alias, 500 of a name.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
MOST_TAG_KEY, MOST_TAG_VALUE, MOST_TAGS = 250, 8000, 50  # MLflow's limits on run tags
MOST_EXPERIMENT_NAME = 500  # MLflow's limit
# Finite bounds of counts and resources: far above any real use, below what overflows or hangs.
MOST_REPLICAS, MOST_CPUS, MOST_GPUS = 1000, 4096, 64
MOST_WORKERS, MOST_UNITS, MOST_SEED = 1024, 65_536, 2**32 - 1
MOST_RESOURCE = 1e15  # of any Ray resource a worker holds (memory counts bytes)
# Resources Ray defines itself: a data.locality label naming one would pin nothing.
RESERVED_RESOURCES = ("CPU", "GPU", "TPU", "memory", "object_store_memory")
RESERVED_RESOURCE_PREFIXES = ("node:", "accelerator_type:")
Seed = Annotated[int, Field(ge=0, le=MOST_SEED)]
Units = Annotated[int, Field(gt=0, le=MOST_UNITS)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, defaults are validated too, an integer is
    an integer (pydantic would take ``true`` as 1 and ``"8"`` as 8), and a secret is given by
    reference."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_integers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None or not _takes_only_integers(field.annotation):
            return value
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool | str):
                raise PydanticCustomError("int_type", "Input should be a valid integer")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _resolve_references(cls, value: Any, info: ValidationInfo) -> Any:
        """Secrets come as ``${env:NAME}`` / ``${file:PATH}`` (``raytrain.config.references``),
        resolved in the field that holds them: a section resolves its own fields."""
        if _section_type(cls.model_fields[str(info.field_name)].annotation) is not None:
            return value
        try:
            return resolve_references(value, secret=is_secret_key(str(info.field_name)))
        except ReferenceProblem as exc:
            raise PydanticCustomError("reference", str(exc)) from None


def _takes_only_integers(annotation: Any) -> bool:
    """Whether a field holds integers (or a list of them) and no other scalar type."""
    found: set[Any] = set()
    stack = [annotation]
    while stack:
        current = stack.pop()
        origin, args = get_origin(current), get_args(current)
        if origin is Annotated:
            stack.append(args[0])
        elif origin is list or (origin is not None and origin is not Literal and args):
            stack += [a for a in args if a is not type(None)]
        elif current is not type(None):
            found.add(current if origin is None else origin)
    return found == {int}


FILE_FORMAT_CHOICES = Literal["auto", "csv", "parquet", "tfrecord", "npz", "images"]


class HeldOutSpec(Section):
    """Examples kept apart from training: a fixed validation or test set of the user's own."""

    source: str = Field(
        description="Required: a local file, glob or image folder (relative to the experiment "
        "file), or gs://BUCKET/PATH, read as data.source is (same label, features, shape and "
        "streaming).",
    )
    format: FILE_FORMAT_CHOICES = Field(
        "auto", description="File format; auto infers it from the file extension."
    )


class DataSpec(Section):
    source: str = Field(
        "builtin:digits",
        description="builtin:<name> (digits, wine, breast_cancer, iris, diabetes), a local "
        "file path or glob (relative to the experiment file), gs://BUCKET/PATH (a glob too, "
        "e.g. gs://bucket/data/*.parquet), or a folder of images with one sub-folder per class "
        "(a path ending in /).",
    )
    format: FILE_FORMAT_CHOICES = Field(
        "auto",
        description="File format; auto infers it from the file extension (a folder: images).",
    )
    label: str = Field(
        "label", description="Label column (CSV/Parquet), feature key (TFRecord) or array (NPZ)."
    )
    features: list[str] | None = Field(
        None,
        description="Feature columns or TFRecord feature keys; all but the label when omitted. "
        "NPZ files hold features in the array 'x'.",
    )
    shape: list[Units] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Reshape each example's features to this shape, e.g. [8, 8, 1] for a CNN; "
        "images are resized to [height, width, channels].",
    )
    validation: HeldOutSpec | None = Field(
        None,
        description="A fixed validation set; absent: validation_split of the training source.",
    )
    test: HeldOutSpec | None = Field(
        None,
        description="A test set, evaluated once with the best checkpoint after training and "
        "never used to choose one; absent: no test metrics.",
    )
    validation_split: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Fraction of the training source held out for validation (without "
        "data.validation).",
    )
    seed: Seed = Field(0, description="Seed of the train/validation split (deterministic).")
    normalize: Literal["none", "standard", "minmax"] = Field(
        "standard",
        description="Feature scaling fitted on the training examples only (never on validation "
        "or test).",
    )
    streaming: bool = Field(
        False,
        description="Stream CSV/Parquet/TFRecord files or image folders with Ray Data (data "
        "larger than one machine's memory) instead of reading them whole on the driver.",
    )
    locality: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        max_length=100,
        description="Custom Ray resource (e.g. onprem) of the nodes that may read the data: "
        "workers, sweep trials and the submitted job's driver run only there; null: any node. "
        "Not one of Ray's own (CPU, GPU, TPU, memory, object_store_memory, node:*, "
        "accelerator_type:*).",
    )

    @field_validator("locality")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value in RESERVED_RESOURCES or (value or "").startswith(RESERVED_RESOURCE_PREFIXES):
            raise ValueError(f"{value} is a resource Ray defines itself; name a custom one")
        return value

    def sources(self) -> dict[str, tuple[str, str]]:
        """Each split's (source, format), by split name: train, and validation and test when
        they are files of their own."""
        found: dict[str, tuple[str, str]] = {"train": (self.source, self.format)}
        for split, held_out in (("validation", self.validation), ("test", self.test)):
            if held_out is not None:
                found[split] = (held_out.source, held_out.format)
        return found

    @property
    def locality_rule(self) -> Locality:
        """``locality`` as the one object every module asks about it: the resources to request,
        which nodes may read the data, the messages (``raytrain.config.locality``)."""
        return Locality(self.locality)


class MLPParams(Section):
    hidden_units: list[Units] = Field(
        [128, 64], min_length=1, max_length=64, description="Width of each hidden Dense layer."
    )
    activation: str = Field("relu", description="Activation of the hidden layers.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    batch_norm: bool = Field(False, description="Batch normalization after each hidden layer.")


class CNNParams(Section):
    filters: list[Units] = Field(
        [32, 64],
        min_length=1,
        max_length=64,
        description="Filters of each conv block (conv, conv, pool).",
    )
    kernel_size: int = Field(3, ge=1, le=11, description="Square kernel size of every conv.")
    dense_units: int = Field(
        128, ge=1, le=MOST_UNITS, description="Width of the Dense layer before the head."
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the head.")
    activation: str = Field("relu", description="Activation of conv and dense layers.")


BUILTIN_BUILDERS: dict[str, type[Section]] = {"mlp": MLPParams, "cnn": CNNParams}


class ModelSpec(Section):
    builder: str = Field(
        "mlp",
        description="Built-in builder (mlp, cnn) or a user function 'package.module:function' "
        "importable from the experiment file's folder.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the builder (checked against the built-in's params).",
    )


class OptimizerSpec(Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop", "adagrad"] = Field(
        "adam", description="Optimizer."
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Learning rate.")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="Momentum (sgd, rmsprop).")
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="Decoupled weight decay (adamw, sgd)."
    )
    clipnorm: float | None = Field(
        None, gt=0.0, le=1e6, description="Clip each gradient to this norm."
    )


class TrainSpec(Section):
    epochs: int = Field(10, ge=1, le=100_000, description="Passes over the training split.")
    batch_size: int = Field(
        128, ge=1, le=2**20, description="Global batch size, split evenly across workers."
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    loss: Loss = Field(
        "sparse_categorical_crossentropy",
        description="Loss; it also sets the model head (softmax, sigmoid or linear).",
    )
    metrics: list[Metric] = Field(
        ["accuracy"], description="Metrics reported per epoch, each also as val_<name>."
    )
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = Field(
        "none", description="Keras mixed-precision policy (worth it on GPUs and TPUs)."
    )
    steps_per_execution: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Batches run per tf.function call: fewer host round trips and, with 2+ "
        "workers, fewer metric all-reduces (benchmarks/README.md).",
    )
    seed: Seed = Field(0, description="Seed of weight init and per-epoch shuffling.")


class ScalingSpec(Section):
    num_workers: int = Field(
        2, ge=1, le=MOST_WORKERS, description="Data-parallel Ray Train workers."
    )
    one_worker: Literal["process", "ray_train"] = Field(
        "process",
        description="How 1 worker trains: process (a run: one Ray actor; a sweep trial: its "
        "own reused Tune trial process; ~1 s to start) or ray_train (a Ray Train run, ~10 s).",
    )
    trial_workers: Literal["reused", "ray_train"] = Field(
        "reused",
        description="How a sweep trial of 2+ workers trains: reused (a worker group kept, "
        "TensorFlow imported, for the sweep's next trial) or ray_train (a Ray Train run each).",
    )
    use_gpu: bool = Field(False, description="Give each worker one GPU.")
    accelerator: Literal["auto", "tpu"] = Field(
        "auto",
        description="auto: CPUs, or GPUs with use_gpu; tpu: one worker on a TPU VM host, "
        "training with TPUStrategy (not verified on TPU hardware).",
    )
    resources_per_worker: dict[
        Annotated[str, Field(min_length=1, max_length=100)],
        Annotated[float, Field(le=MOST_RESOURCE, allow_inf_nan=False)],
    ] = Field(
        default_factory=lambda: {"CPU": 1.0},
        max_length=32,
        description="Ray resources each worker holds, e.g. {CPU: 4} or a custom {onprem: 1}.",
    )
    communication: Literal["auto", "ring", "nccl"] = Field(
        "auto", description="All-reduce implementation of MultiWorkerMirroredStrategy."
    )
    inter_op_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="TensorFlow inter-op threads per worker; null: the worker's CPUs, so that "
        "workers never use more cores than they hold.",
    )
    allreduce_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Precision of the gradient all-reduce with 2+ workers; auto: bfloat16 (half "
        "the bytes, same accuracy in benchmarks/README.md), float32 under mixed_float16.",
    )
    bytes_per_pack: int = Field(
        0,
        ge=0,
        le=2**34,
        description="Gradient all-reduce pack size in bytes; 0: one pack for all gradients.",
    )


class CheckpointSpec(Section):
    keep: int | None = Field(
        2, ge=1, le=10_000, description="Best checkpoints kept; null keeps all."
    )
    score: str = Field("val_loss", description="Reported metric that ranks checkpoints.")
    mode: Literal["min", "max"] = Field("min", description="Whether a lower or higher score wins.")


class FailureSpec(Section):
    max_failures: int = Field(
        3,
        ge=-1,
        le=10_000,
        description="Restarts of the worker group from the latest checkpoint after a worker or "
        "node is lost (a crash, an OOM kill, a spot VM gone); -1 retries forever. An exception "
        "in the model code or data is never retried, and announced preemptions are retried "
        "without limit. 3 rides out a few losses in a long run on preemptible machines, yet a "
        "cluster that keeps losing workers fails within minutes.",
    )


class TrackingSpec(Section):
    enabled: bool = Field(True, description="Log the run to MLflow.")
    uri: str = Field(
        DEFAULT_TRACKING_URI,
        description="MLflow tracking URI; a server (http://head:5000) on multi-node clusters.",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=MOST_EXPERIMENT_NAME,
        description="MLflow experiment; the name by default.",
    )
    run_name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="The run's (or sweep's) name: its MLflow run name and its storage folder, so "
        "one safe folder name; generated (<name>-<time>-<random>) when omitted.",
    )
    register_as: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="Register the best model under this name in the model registry: letters, "
        "digits, '.', '_' and '-', at most 255 (no '/', ':' or '@', which model references "
        "and URLs use).",
    )
    tags: dict[
        Annotated[str, Field(min_length=1, max_length=MOST_TAG_KEY)],
        Annotated[str, Field(max_length=MOST_TAG_VALUE)],
    ] = Field(
        default_factory=dict,
        max_length=MOST_TAGS,
        description="Extra MLflow run tags (MLflow keeps keys of 250 and values of 8000 "
        "characters).",
    )


ExportMode = Literal["none", "float16", "dynamic", "int8"]
EXPORT_MODES: tuple[ExportMode, ...] = get_args(ExportMode)
# A sweep's edge metrics, tflite_<mode>_<what>: the export mode of each name, and every name.
EDGE_MODES = {"float32": "none", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}
EDGE_METRICS = tuple(
    f"tflite_{mode}_{what}"
    for mode in EDGE_MODES
    for what in ("bytes", "latency_ms", "latency_spread_ms", "accuracy")
)


class ExportSpec(Section):
    format: Literal["tflite"] = Field(
        "tflite", description="Export format: TFLite (LiteRT), for mobile and edge devices."
    )
    quantize: list[ExportMode] = Field(
        list(EXPORT_MODES),
        min_length=1,
        description="Modes exported and compared: none (float32, always exported: the reference "
        "of every ratio), float16 (float16 weights), dynamic (int8 weights), int8 (full integer, "
        "calibrated on training examples).",
    )
    representative_examples: int = Field(
        200,
        ge=1,
        le=100_000,
        description="Training examples that calibrate the int8 activation ranges.",
    )
    int8_io: bool = Field(
        False,
        description="int8 mode only: int8 input and output tensors too (integer-only hardware); "
        "callers quantize inputs with the input's scale and zero point.",
    )
    num_threads: int = Field(
        1, ge=1, le=1024, description="LiteRT interpreter threads when measuring."
    )
    latency_runs: int = Field(
        200,
        ge=10,
        le=1_000_000,
        description="Timed batch-1 inferences per model (median reported).",
    )
    out: str | None = Field(
        None,
        description="Folder or gs://bucket/prefix for the SavedModel, .tflite files and report; "
        "default <storage>/<name>/export/<model>-v<version> (a folder is relative to the working "
        "directory). It must be empty or hold only an earlier raytrain export, which is replaced.",
    )
    trust_pickled_models: bool = Field(
        False,
        description="Load a model version whose files hold pickled Python objects (e.g. MLflow's "
        "custom_objects.cloudpickle), which run code when loaded; only for registries whose "
        "writers you trust. Never read from an experiment recorded in MLflow.",
    )


SPACE_KINDS = ("uniform", "loguniform", "quniform", "qloguniform", "randint", "choice", "grid")


class SearchSpec(Section):
    algorithm: Literal["optuna", "random", "grid"] = Field(
        "optuna", description="optuna (model-based), random, or grid (every combination)."
    )
    sampler: Literal["tpe", "cmaes", "random"] = Field(
        "tpe", description="Optuna's sampler (algorithm: optuna only)."
    )
    seed: Seed | None = Field(0, description="Seed of the search: the same seed, the same trials.")


class SchedulerSpec(Section):
    name: Literal["asha", "median", "none"] = Field(
        "asha", description="Early stopping of bad trials: asha, median stopping, or none."
    )
    grace_period: int = Field(
        1, ge=1, le=100_000, description="Epochs every trial runs before it can stop."
    )
    reduction_factor: float = Field(3.0, gt=1.0, le=100, description="ASHA: keep 1/this per rung.")


class ConstraintSpec(Section):
    max: float | None = Field(None, description="The metric must be at most this.")
    min: float | None = Field(None, description="The metric must be at least this.")

    @model_validator(mode="after")
    def _bounded(self) -> ConstraintSpec:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min <= max must hold, but got (min={self.min}, max={self.max})")
        return self


class TuneSpec(Section):
    metric: str | list[str] = Field(
        "val_loss", description="Metric to optimize; a list makes a multi-objective sweep."
    )
    mode: Literal["min", "max"] | list[Literal["min", "max"]] = Field(
        "min", description="min or max, one per metric."
    )
    num_samples: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Trials to run (a grid search runs every grid point once instead).",
    )
    time_budget_s: float | None = Field(
        None, gt=0, le=31_536_000, description="Stop starting trials after this (a year at most)."
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=10_000, description="Trials at once; default: as many as the cluster fits."
    )
    max_failed_trials: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="End the sweep after this many failed trials; null: never.",
    )
    target: float | None = Field(
        None,
        allow_inf_nan=False,
        description="End the sweep once a trial's metric reaches this value.",
    )
    constraints: dict[str, ConstraintSpec] = Field(
        default_factory=dict,
        description="Metric -> {max, min} every champion must satisfy, e.g. "
        "{tflite_int8_latency_ms: {max: 2.0}}; Optuna's TPE sampler steers the search by them. "
        "No trial satisfies them: no champion.",
    )
    search: SearchSpec = Field(default_factory=SearchSpec, description="How configs are chosen.")
    scheduler: SchedulerSpec = Field(
        default_factory=SchedulerSpec, description="How bad trials are stopped early."
    )
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Dotted path -> {uniform|loguniform|randint: [low, high]}, "
        "{quniform|qloguniform: [low, high, q]}, {choice|grid: [values]}.",
    )

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[Literal["min", "max"]]:
        return self.mode if isinstance(self.mode, list) else [self.mode]

    @property
    def edge_metrics(self) -> list[str]:
        """The edge metrics the sweep asks for (objectives and constraints): what each trial
        measures on its best checkpoint at its end."""
        named = [*self.metrics, *self.constraints]
        return [m for m in dict.fromkeys(named) if m in EDGE_METRICS]

    @property
    def trial_count(self) -> int:
        """Trials the sweep plans to run: a grid's every combination, else num_samples."""
        if self.search.algorithm != "grid":
            return self.num_samples
        return math.prod(len(next(iter(entry.values()))) for entry in self.space.values())


class AutoscalingSpec(Section):
    min_replicas: int = Field(
        1, ge=0, le=MOST_REPLICAS, description="Replicas kept even when idle."
    )
    max_replicas: int = Field(
        2, ge=1, le=MOST_REPLICAS, description="Replicas at most, under load."
    )
    target_ongoing_requests: float = Field(
        8.0,
        gt=0,
        le=10_000,
        description="Requests in flight per replica that Serve scales towards.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


LOOPBACK_HOSTS = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches ``host`` (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in LOOPBACK_HOSTS


class ServeSpec(Section):
    num_replicas: int = Field(
        1, ge=1, le=MOST_REPLICAS, description="Replicas when autoscaling is off."
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Scale replicas with load instead of num_replicas."
    )
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Requests one model call may batch together (@serve.batch)."
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=10, description="How long a batch waits for more requests before it runs."
    )
    max_ongoing_requests: int = Field(
        128,
        ge=1,
        le=10_000,
        description="Requests one replica accepts at once; above max_batch_size.",
    )
    num_cpus: float = Field(
        1.0, gt=0, le=MOST_CPUS, description="CPUs per replica (= its TF threads)."
    )
    num_gpus: float = Field(0.0, ge=0, le=MOST_GPUS, description="GPUs per replica.")
    max_instances_per_request: int = Field(
        1024, ge=1, le=65_536, description="More instances in one request get a 413."
    )
    max_body_mb: float = Field(
        16.0,
        gt=0,
        le=1024,
        description="Larger request bodies get a 413, before any parsing; a replica needs a few "
        "times this much memory per request it parses at once.",
    )
    max_queued_requests: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Requests waiting for a replica; more get a 503 with Retry-After.",
    )
    request_timeout_s: float | None = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Requests not answered in time get a 408 (for all of Serve).",
    )
    auth_token_env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Require `Authorization: Bearer TOKEN` on every route but health, TOKEN "
        "read from this environment variable when the model is deployed (an unset or empty "
        "variable is an error, never no auth).",
    )
    auth_token_file: str | None = Field(
        None,
        min_length=1,
        description="As auth_token_env, TOKEN read from this file (missing or empty: an error).",
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Where HTTP listens; any other address than loopback (0.0.0.0 exposes it to "
        "the network) needs a token (auth_token_env or auth_token_file) or "
        "allow_unauthenticated: true.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve on a non-loopback host without a token: anyone who reaches the port "
        "can call the model.",
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    trust_pickled_models: bool = Field(
        False,
        description="Load a model version whose files hold pickled Python objects (e.g. MLflow's "
        "custom_objects.cloudpickle), which run code when loaded; only for registries whose "
        "writers you trust. Never read from an experiment recorded in MLflow.",
    )

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServeSpec:
        token = self.auth_token_env or self.auth_token_file
        if not (token or self.allow_unauthenticated or is_loopback(self.host)):
            raise ValueError(
                f"host {self.host} is reachable from other machines: set auth_token_env or "
                "auth_token_file, or allow_unauthenticated: true to serve without a token"
            )
        return self


class Experiment(Section):
    """One experiment: what to train, on what, where, and where its results go."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Required: names the experiment's storage folder and, by default, its MLflow "
        "experiment (a default name would pool unrelated runs in one folder and one experiment).",
    )
    description: str = Field(
        "",
        max_length=MOST_TAG_VALUE,
        description="Free text, logged to MLflow (which keeps 8000 characters).",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="Where the examples come from.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="What is trained.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="How it is trained.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="On how many workers.")
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Which checkpoints are kept."
    )
    failure: FailureSpec = Field(
        default_factory=FailureSpec, description="What happens when a worker dies."
    )
    storage: str = Field(
        DEFAULT_STORAGE,
        description="Checkpoints and run state: a local folder (relative to the working "
        "directory) or gs://bucket/prefix.",
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking.")
    export: ExportSpec | None = Field(
        None,
        description="Export the registered model to TFLite after training or a sweep; "
        "absent: no export (raytrain export does it later).",
    )
    tune: TuneSpec | None = Field(
        None, description="Hyperparameter sweep; absent: a single training run."
    )
    serve: ServeSpec = Field(
        default_factory=ServeSpec, description="How `raytrain serve` hosts the model."
    )

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def reported_metrics(self) -> list[str]:
        """Every compiled metric a training run reports per epoch, by name (and val_<name>);
        ``EXTRA_METRICS`` are reported besides them."""
        compiled = {"loss", *self.train.metrics}
        return sorted(compiled | {f"val_{name}" for name in compiled})

    @property
    def per_worker_batch_size(self) -> int:
        return self.train.batch_size // self.scaling.num_workers

    def worker_resources(self) -> dict[str, float]:
        """Resources one worker holds, GPU included when ``use_gpu`` asks for it, and a sliver
        of the ``data.locality`` resource, which keeps it on the nodes that may read the data."""
        resources = {**self.data.locality_rule.resources(), **self.scaling.resources_per_worker}
        if self.scaling.use_gpu:
            resources.setdefault("GPU", 1.0)
        return resources

    @property
    def in_one_process(self) -> bool:
        """Whether training runs in one process without Ray Train: 1 worker with
        ``scaling.one_worker: process``, unless a sweep varies ``scaling`` (then each trial holds
        what its own configuration asks for, in a Ray Train run)."""
        return (
            self.scaling.num_workers == 1
            and self.scaling.one_worker == "process"
            and not self._scaling_swept
        )

    @property
    def in_reused_group(self) -> bool:
        """Whether each sweep trial of 2+ workers trains in a worker group its Tune trial process
        keeps for the next trial (``train.group``), not a Ray Train run: with
        ``scaling.trial_workers: reused``, on CPUs or GPUs (a TPU host trains alone), unless the
        sweep varies ``scaling``."""
        return (
            self.tune is not None
            and self.scaling.num_workers > 1
            and self.scaling.trial_workers == "reused"
            and self.scaling.accelerator != "tpu"
            and not self._scaling_swept
        )

    @property
    def _scaling_swept(self) -> bool:
        return self.tune is not None and any(k.split(".")[0] == "scaling" for k in self.tune.space)


def unknown_key_message(loc: tuple[str | int, ...]) -> str:
    """The unknown-key message, with a "did you mean" from the schema section at ``loc[:-1]``."""
    allowed = _fields_at(loc[:-1])
    message = f"unknown key '{loc[-1]}'"
    close = suggested_key(loc)
    if close:
        return f"{message}; did you mean '{close}'?"
    if allowed:
        return f"{message}; expected one of: {', '.join(allowed)}"
    return message


def suggested_key(loc: tuple[str | int, ...]) -> str | None:
    """The field an unknown key at ``loc`` most likely misspells, if one is close enough."""
    close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1]), n=1, cutoff=0.6)
    return close[0] if close else None


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the schema section at ``loc`` (empty when it is not a section)."""
    model: Any = Experiment
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            return []
        model = _section_type(info.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _section_type(arg)
            if found is not None:
                return found
    return None
