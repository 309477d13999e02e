"""Model builders: the built-ins and a user's ``package.module:function``.

A builder has the same signature whether it is ours or the user's::

    def build(*, input_shape: tuple[int, ...], num_outputs: int,
              output_activation: str | None, **params) -> tf.keras.Model

raytrain wraps what it returns behind a Normalization layer holding the feature scaling fitted
on the training split, so the saved model takes raw features: serving and export need no
preprocessing code of their own.

Import this module only where ``TF_USE_LEGACY_KERAS=1`` is set (raytrain/__init__.py says why):
``tf.keras`` must be tf_keras for MultiWorkerMirroredStrategy to work across workers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tensorflow as tf

from raytrain.config.resolve import load_builder
from raytrain.config.schema import BUILTIN_BUILDERS, ModelSpec
from raytrain.data.dataset import DataInfo
from raytrain.errors import ModelBuildError
from raytrain.tracking.keras_file import code_in

__all__ = ["build_model", "cnn", "head_for", "mlp"]


def mlp(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    output_activation: str | None,
    hidden_units: list[int],
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> tf.keras.Model:
    layers = [tf.keras.layers.Input(shape=input_shape), tf.keras.layers.Flatten()]
    for units in hidden_units:
        layers.append(tf.keras.layers.Dense(units, activation=None if batch_norm else activation))
        if batch_norm:
            layers += [tf.keras.layers.BatchNormalization(), tf.keras.layers.Activation(activation)]
        if dropout:
            layers.append(tf.keras.layers.Dropout(dropout))
    layers.append(_output(num_outputs, output_activation))
    return tf.keras.Sequential(layers, name="mlp")


def cnn(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    output_activation: str | None,
    filters: list[int],
    kernel_size: int = 3,
    dense_units: int = 128,
    dropout: float = 0.2,
    activation: str = "relu",
) -> tf.keras.Model:
    if len(input_shape) != 3:
        raise ModelBuildError(
            f"the cnn builder needs images (height, width, channels), but examples have shape "
            f"{input_shape}; set data.shape, e.g. [8, 8, 1]"
        )
    layers: list[Any] = [tf.keras.layers.Input(shape=input_shape)]
    side = min(input_shape[:2])
    for n in filters:
        layers.append(tf.keras.layers.Conv2D(n, kernel_size, padding="same", activation=activation))
        if side >= 2:  # pool while the feature map still has room to shrink
            layers.append(tf.keras.layers.MaxPooling2D())
            side //= 2
    layers += [tf.keras.layers.Flatten(), tf.keras.layers.Dense(dense_units, activation=activation)]
    if dropout:
        layers.append(tf.keras.layers.Dropout(dropout))
    layers.append(_output(num_outputs, output_activation))
    return tf.keras.Sequential(layers, name="cnn")


BUILDERS = {"mlp": mlp, "cnn": cnn}


def head_for(loss: str, num_classes: int | None) -> tuple[int, str | None]:
    """Output units and activation implied by the loss."""
    if loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        return int(num_classes or 2), "softmax"
    if loss == "binary_crossentropy":
        return 1, "sigmoid"
    return 1, None


def build_model(
    spec: ModelSpec, info: DataInfo, *, loss: str, base_dir: str | Path | None = None
) -> tf.keras.Model:
    """The user's architecture behind the feature-scaling layer, uncompiled."""
    units, activation = head_for(loss, info.num_classes)
    params = dict(spec.params)
    if spec.builder in BUILTIN_BUILDERS:
        builder: Any = BUILDERS[spec.builder]
        params = BUILTIN_BUILDERS[spec.builder].model_validate(params).model_dump()
    else:
        try:
            builder = load_builder(spec.builder, Path(base_dir) if base_dir else None)
        except Exception as exc:
            raise ModelBuildError(f"cannot import model builder '{spec.builder}': {exc}") from None
    try:
        body = builder(
            input_shape=info.input_shape, num_outputs=units, output_activation=activation, **params
        )
    except ModelBuildError:
        raise
    except Exception as exc:
        raise ModelBuildError(
            f"model builder '{spec.builder}' failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(body, tf.keras.Model):
        raise ModelBuildError(
            f"model builder '{spec.builder}' returned {type(body).__name__}, not a tf.keras.Model "
            "(build it with tf.keras / tf_keras, not Keras 3)"
        )
    inputs = tf.keras.layers.Input(shape=info.input_shape, name="features")
    axes = tuple(range(1, len(info.input_shape) + 1))
    scale = tf.keras.layers.Normalization(
        axis=axes, mean=info.scale_offset, variance=info.scale_variance, name="feature_scaling"
    )
    name = re.sub(r"\W", "_", spec.builder)[:60]
    model = tf.keras.Model(inputs, body(scale(inputs)), name=name)
    # Loading refuses a model that names code (raytrain.tracking.keras_file): say so before
    # training, not when the driver loads the best checkpoint.
    problem = code_in(tf.keras.saving.serialize_keras_object(model))
    if problem:
        raise ModelBuildError(
            f"model builder '{spec.builder}' made a model whose config {problem}, which raytrain "
            "never loads (it could run anyone's code from a registry): build it from Keras layers"
        )
    return model


def _output(units: int, activation: str | None) -> tf.keras.layers.Layer:
    # float32 head: under a mixed-precision policy, softmax in float16 loses too much.
    return tf.keras.layers.Dense(units, activation=activation, dtype="float32", name="output")
