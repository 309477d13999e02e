"""The model registry: what ``name``, ``name@alias`` and ``name/version`` point at, and loading it.

Export (and serving) take a model the way MLflow's registry names it. A bare name means its
``champion`` alias, the version a sweep moves only when a trial beats it, so "the best model so
far" never changes under a user by accident. Every failure says what the registry holds instead.

Load models only in a process that imported ``raytrain`` first: ``tf.keras`` must be tf_keras.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from raytrain.config.schema import Experiment
from raytrain.errors import (
    AliasNotFoundError,
    ModelNotFoundError,
    RegistryError,
    TrackingError,
    UntrustedModelError,
    VersionNotFoundError,
)
from raytrain.secrets import masked_paths
from raytrain.tracking.keras_file import check_keras_file, load_keras_file
from raytrain.tracking.names import CHAMPION, PARENT_TAG, SPEC_ARTIFACT, SPEC_FOLDER
from raytrain.tracking.runs import absolute_tracking_uri, check_reachable

__all__ = [
    "KERAS_FILE",
    "PICKLE_SUFFIXES",
    "RegisteredModel",
    "check_keras",
    "check_trusted",
    "download",
    "inert_pickle",
    "load_keras",
    "parse_reference",
    "pickled_files",
    "recorded_experiment",
    "resolve",
    "tag_version",
]

# Where MLflow's tensorflow flavor puts the tf_keras model ``runs.log_model`` logs.
KERAS_FILE = "data/model.keras"
# Files of pickled Python objects (MLflow writes custom objects as *.cloudpickle).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill")


@dataclass(frozen=True)
class RegisteredModel:
    """One version of a registered model: the run that trained it and where its files are."""

    name: str
    version: str
    run_id: str
    source: str  # the logged model's artifact URI, e.g. models:/m-<id>
    tracking_uri: str
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name} version {self.version}"


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``name`` -> (name, "champion", None); ``name@alias`` -> (name, alias, None);
    ``name/version`` -> (name, None, version)."""
    name, at, alias = reference.rpartition("@")
    if at:
        if name and alias:
            return name, alias, None
    else:
        name, slash, version = reference.rpartition("/")
        if not slash and version:
            return version, CHAMPION, None
        if name and version.isdigit():
            return name, None, version
    raise RegistryError(
        f"'{reference}' is not a model reference; expected NAME (its '{CHAMPION}' alias), "
        "NAME@ALIAS or NAME/VERSION"
    )


def resolve(reference: str, *, tracking_uri: str) -> RegisteredModel:
    """The registered version ``reference`` points at, in the registry of ``tracking_uri``."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_reference(reference)
    uri = _open_store(tracking_uri)
    client = _client(uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        _raise_unless_missing(exc, uri)
        raise ModelNotFoundError(_no_model(client, name, uri)) from None
    if alias is not None:
        version = registered.aliases.get(alias)
        if version is None:
            raise AliasNotFoundError(_no_alias(client, registered, alias))
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as exc:
        _raise_unless_missing(exc, uri)
        versions = ", ".join(_versions(client, name)) or "none"
        message = f"{name} has no version {version}; versions: {versions}"
        raise VersionNotFoundError(message) from None
    return RegisteredModel(
        name=name,
        version=str(found.version),
        run_id=found.run_id,
        source=found.source,
        tracking_uri=uri,
        alias=alias,
    )


def download(model: RegisteredModel, path: str = "") -> str:
    """A local copy of the version's files (MLmodel, the tf_keras model), from wherever its
    artifacts live. The location is asked of this registry, and fetched through it: MLflow
    would resolve a ``models:/`` URI, or the ``mlflow-artifacts:/`` one of a server that
    proxies artifacts (``--artifacts-destination``), against the process's global tracking
    URI, which a Serve replica lacks."""
    import mlflow

    location = _client(model.tracking_uri).get_model_version_download_uri(model.name, model.version)
    if path:  # one file of the model, e.g. its MLmodel, not the whole model
        location = f"{location.rstrip('/')}/{path}"
    return cast(
        str,
        mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=model.tracking_uri),
    )


def pickled_files(model: RegisteredModel) -> list[str]:
    """The files of the version's model that hold pickled Python objects (paths in the model),
    found by listing its artifacts; only pickle files themselves are downloaded, to be read
    (never unpickled) by ``inert_pickle``."""
    import mlflow

    location = _client(model.tracking_uri).get_model_version_download_uri(model.name, model.version)
    location = location.rstrip("/")
    found, folders = [], [""]
    while folders:
        folder = folders.pop()
        where = f"{location}/{folder}" if folder else location
        listed = mlflow.artifacts.list_artifacts(
            artifact_uri=where, tracking_uri=model.tracking_uri
        )
        for item in listed or []:
            path = f"{folder}/{item.path.rsplit('/', 1)[-1]}".lstrip("/")
            if item.is_dir:
                folders.append(path)
            elif _is_pickled(path):
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location}/{path}", tracking_uri=model.tracking_uri
                )
                if not inert_pickle(Path(local).read_bytes()):
                    found.append(path)
    return sorted(found)


def inert_pickle(data: bytes) -> bool:
    """Whether a pickle only maps names to classes of tf_keras itself and calls nothing, read
    with ``pickletools`` (never unpickled). MLflow pickles tf_keras' global custom-object
    registry (its own optimizers) with every tf_keras model it logs, as
    ``global_custom_objects.cloudpickle``: that file runs no one's code, and raytrain does not
    load it anyway. Anything else (a call, a class from elsewhere, code) is not inert."""
    import pickletools

    mark, mapping, known_class = object(), object(), object()
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("PROTO", "FRAME", "STOP"):
                continue
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                stack.append(arg)
            elif op.name in ("MARK", "EMPTY_DICT"):
                stack.append(mark if op.name == "MARK" else mapping)
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else int(cast(int, arg))] = stack[-1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(cast(int, arg))])
            elif op.name == "STACK_GLOBAL":
                module = stack[-2]
                if not (isinstance(module, str) and module.startswith("tf_keras.")):
                    return False
                stack[-2:] = [known_class]
            elif op.name == "SETITEM":
                del stack[-2:]
            elif op.name == "SETITEMS":
                del stack[len(stack) - stack[::-1].index(mark) - 1 :]
            else:
                return False
    except (ValueError, IndexError, KeyError):  # not a pickle, or one this reading rejects
        return False
    return stack == [mapping]


def check_trusted(model: RegisteredModel, found: list[str], *, trust_pickled_models: bool) -> None:
    """Refuse a model whose files hold pickled objects unless the caller trusts it."""
    if found and not trust_pickled_models:
        raise UntrustedModelError(
            f"refused to load {model}: its model holds pickled Python objects ({found[0]}), "
            "which run code when loaded; pass `trust_pickled_models` only if you trust everyone "
            "who can write to this registry",
            options=("trust_pickled_models",),
        )


def load_keras(model: RegisteredModel, *, trust_pickled_models: bool = False) -> Any:
    """The version's tf_keras model for inference (not compiled: no optimizer or metrics).

    Loaded from the file raytrain logged (``data/model.keras``), once ``keras_file`` found it a
    zip-format Keras file that names no code, in Keras' safe mode; MLflow's own loader, which
    unpickles the custom objects a model may carry and runs its code, only with
    ``trust_pickled_models``."""
    folder = Path(download(model))
    if trust_pickled_models:
        import mlflow

        return mlflow.tensorflow.load_model(str(folder), keras_model_kwargs={"compile": False})
    found = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if _is_pickled(p.name) and p.is_file() and not inert_pickle(p.read_bytes())
    )
    check_trusted(model, found, trust_pickled_models=False)
    return load_keras_file(folder / KERAS_FILE, **_keras_file_args(model))


def check_keras(model: RegisteredModel) -> None:
    """Refuse the version if its ``data/model.keras`` would run code when loaded: before any
    Serve replica starts."""
    check_keras_file(Path(download(model)) / KERAS_FILE, **_keras_file_args(model))


def _keras_file_args(model: RegisteredModel) -> dict[str, Any]:
    hint = (
        "; pass `trust_pickled_models` only if you trust everyone who can write to this "
        "registry with running code"
    )
    return {
        "what": str(model),
        "name": KERAS_FILE,
        "hint": hint,
        "options": ("trust_pickled_models",),
    }


def _is_pickled(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def recorded_experiment(model: RegisteredModel) -> Experiment:
    """The experiment that trained ``model``: the resolved spec logged on its run, or for a sweep's
    trial on the sweep's parent run (all trials share the parent's data)."""
    from pydantic import ValidationError

    client = _client(model.tracking_uri)
    run = client.get_run(model.run_id)
    for run_id in (model.run_id, run.data.tags.get(PARENT_TAG)):
        if run_id and any(
            a.path == SPEC_ARTIFACT for a in client.list_artifacts(run_id, SPEC_FOLDER)
        ):
            with tempfile.TemporaryDirectory() as folder:
                text = Path(client.download_artifacts(run_id, SPEC_ARTIFACT, folder)).read_text()
            tree = yaml.safe_load(text)
            _refuse_masked(model, tree)
            try:
                return Experiment.model_validate(tree)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                raise RegistryError(
                    f"the experiment recorded with {model} no longer validates ({where}: "
                    f"{first['msg']}); pass `experiment`",
                    options=("experiment",),
                ) from None
    raise RegistryError(
        f"{model} (run {model.run_id}) has no recorded experiment ({SPEC_ARTIFACT}); "
        "pass `experiment`",
        options=("experiment",),
    )


def tag_version(tracking_uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a registered model version (e.g. its test metrics, for the registry's UI
    and whoever promotes it)."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _refuse_masked(model: RegisteredModel, tree: Any) -> None:
    """MLflow holds the experiment with its secrets masked: a mask is never used as a value.
    Masked tracking settings and description are not read back (the caller names its store)."""
    used = [p for p in masked_paths(tree) if not p.startswith(("tracking.", "description"))]
    if used:
        raise RegistryError(
            f"the experiment recorded with {model} has masked secrets ({', '.join(used)}): "
            "MLflow never holds them; pass `experiment`",
            options=("experiment",),
        )


def _open_store(tracking_uri: str) -> str:
    """The absolute URI of an existing store: MLflow would create an empty sqlite file."""
    uri = absolute_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ModelNotFoundError(
            f"no MLflow database at {uri.removeprefix('sqlite:///')}; run where the experiment "
            "ran, or pass `tracking_uri`",
            options=("tracking_uri",),
        )
    check_reachable(uri)
    return uri


def _client(uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _raise_unless_missing(exc: Exception, uri: str) -> None:
    """A store that fails for another reason than "not found" is a tracking problem."""
    if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow ({uri}): {first}") from None


def _no_model(client: Any, name: str, uri: str) -> str:
    names = sorted(m.name for m in client.search_registered_models())
    if not names:
        return f"no registered model '{name}': the registry of {uri} is empty"
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"no registered model '{name}' in {uri}; {hint}registered: {', '.join(names)}"


def _no_alias(client: Any, registered: Any, alias: str) -> str:
    name = registered.name
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(registered.aliases.items())) or "none"
    versions = _versions(client, name)
    message = f"{name} has no alias '{alias}' (aliases: {aliases}; versions: "
    message += f"{', '.join(versions) or 'none'})"
    if alias == CHAMPION and versions:
        message += f"; a sweep sets '{CHAMPION}', or name a version: {name}/{versions[-1]}"
    return message


def _versions(client: Any, name: str) -> list[str]:
    found = client.search_model_versions(f"name = '{name}'")
    return [str(v) for v in sorted(int(m.version) for m in found)]
