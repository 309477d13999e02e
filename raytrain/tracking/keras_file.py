"""The one gate every tf_keras model file passes before it is deserialized.

tf_keras' safe mode guards only its zip format: a ``.keras`` file that is not a zip goes to the
legacy HDF5 / SavedModel loader, which ignores ``safe_mode`` and rebuilds ``Lambda`` layers from
their marshalled bytecode, so loading runs their code. And the zip format's ``config.json`` may
still name code: a ``Lambda`` (bytecode), a layer that calls a TensorFlow function by name
(``TFOpLambda``), or a class or function by ``module``, which tf_keras imports. So a model file
is loaded only when it is a zip whose config names Keras' own classes and built-in functions,
nothing else; raytrain writes nothing else.
"""

from __future__ import annotations

import json
import zipfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raytrain.errors import UntrustedModelError

__all__ = ["check_keras_file", "code_in", "load_keras_file"]

CONFIG = "config.json"  # in the zip: the model's architecture, what tf_keras deserializes
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Modules a config may name (tf_keras writes its own classes as keras.*). raytrain has no custom
# layers; one it adds is registered with tf_keras and its module added here.
ALLOWED_MODULES = ("keras", "tf_keras")
# Layers whose config carries Python (Lambda: bytecode) or calls a method by name.
CODE_LAYERS = frozenset({"Lambda", "ClassMethod", "InstanceMethod", "InstanceProperty"})
# Layers tf_keras makes when a builder applies a TensorFlow function to Keras tensors (``x + y``,
# ``tf.nn.relu(x)``): they call any public TF symbol their config names (``tf.io.write_file``,
# ``tf.io.gfile.remove``, ``tf.print`` to a file), so only tensor math is let through.
OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
PURE_OP_NAMESPACES = frozenset({"__operators__", "math", "nn", "linalg", "signal"})
PURE_OPS = frozenset(
    {
        *("reshape", "concat", "stack", "unstack", "split", "expand_dims", "squeeze"),
        *("transpose", "tile", "pad", "slice", "strided_slice", "gather", "gather_nd"),
        *("boolean_mask", "where", "cast", "identity", "stop_gradient", "shape", "rank"),
        *("size", "ones_like", "zeros_like", "ones", "zeros", "fill", "range", "one_hot"),
        *("clip_by_value", "broadcast_to", "einsum", "norm", "reverse", "roll", "repeat"),
        *("sort", "argsort", "meshgrid"),
    }
)
# Functions named by module: only Keras' built-in activations, losses and metrics (``builtins``
# is how tf_keras names those by their short name).
FUNCTION_MODULES = frozenset({"activations", "losses", "metrics"})


def check_keras_file(
    path: Path, *, what: str, name: str, hint: str = "", options: Sequence[str] = ()
) -> None:
    """Refuse, in one line naming ``what`` (e.g. the version) and ``name`` (the file as its
    owner knows it), a file that is not a zip-format Keras model or whose config names code.
    ``hint`` ends the message (how to trust it anyway), naming ``options``."""
    problem = _problem(path)
    if problem:
        raise UntrustedModelError(
            f"refused to load {what}: its {name} {problem}; raytrain loads only zip-format "
            f"Keras files that name no Python code{hint}",
            options=options,
        )


def load_keras_file(
    path: Path, *, what: str, name: str, hint: str = "", options: Sequence[str] = ()
) -> Any:
    """The tf_keras model in ``path`` (not compiled), once ``check_keras_file`` let it through."""
    import tensorflow as tf

    check_keras_file(path, what=what, name=name, hint=hint, options=options)
    return tf.keras.models.load_model(str(path), compile=False, safe_mode=True)


def _problem(path: Path) -> str | None:
    """What makes ``path`` unsafe to load, or None."""
    if path.is_dir():
        return "is a folder (a SavedModel?), not a zip-format Keras file"
    if not path.is_file():
        return "is missing"
    if not zipfile.is_zipfile(path):  # the test tf_keras' load_model makes, byte for byte
        with path.open("rb") as f:
            hdf5 = f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
        # tf_keras hands such a file to its legacy loader, which ignores safe_mode.
        kind = "an HDF5 file" if hdf5 else "not a zip archive"
        return f"is {kind}, which tf_keras loads without safe mode (running Lambda layers' code)"
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(CONFIG))
    except KeyError:
        return f"has no {CONFIG}"
    except (zipfile.BadZipFile, ValueError, RecursionError) as exc:
        return f"has an unreadable {CONFIG} ({type(exc).__name__})"
    return code_in(config)


def code_in(config: Any) -> str | None:
    """The first thing in a parsed ``config.json`` that names Python code, or None. Every
    object is visited (layers, nested models, initializers, compile settings)."""
    queue = deque([config])
    while queue:
        item = queue.popleft()
        if isinstance(item, list):
            queue.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        queue.extend(item.values())
        class_name, module = item.get("class_name"), item.get("module")
        label = _label(item)
        if class_name in CODE_LAYERS:
            return f"names Python code ({label} is a {class_name} layer)"
        if class_name in OP_LAYERS and not _pure_op(item.get("config")):
            return f"names Python code ({label} calls a TensorFlow function that is not math)"
        if class_name == "__lambda__" or any(
            (key == "function_type" or key.endswith("_fn_type")) and value == "lambda"
            for key, value in item.items()
        ):
            return f"names Python code ({label} holds a lambda)"
        if module is None:
            continue
        if not isinstance(module, str):
            return f"names a module that is not a name ({label})"
        if class_name == "function":
            if not _builtin_function(module):
                return f"names Python code (function '{item.get('config')}' of module '{module}')"
        elif module.split(".")[0] not in ALLOWED_MODULES:
            return f"names Python code ({label} is from module '{module}')"
    return None


def _pure_op(config: Any) -> bool:
    """Whether an op layer's ``config`` names a TF function of tensor math only."""
    symbol = config.get("function") if isinstance(config, dict) else None
    if not isinstance(symbol, str):
        return False
    return symbol.split(".")[0] in PURE_OP_NAMESPACES or symbol in PURE_OPS


def _builtin_function(module: str) -> bool:
    parts = module.split(".")
    return module == "builtins" or (
        parts[0] in ALLOWED_MODULES and not FUNCTION_MODULES.isdisjoint(parts)
    )


def _label(item: dict[str, Any]) -> str:
    inner = item.get("config")
    layer = inner.get("name") if isinstance(inner, dict) else item.get("name")
    return f"'{layer}'" if isinstance(layer, str) else f"a {item.get('class_name') or 'config'}"
