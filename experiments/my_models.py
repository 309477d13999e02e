"""A user model builder, referenced from custom_model.yaml as ``my_models:residual_mlp``.

raytrain calls it with ``input_shape``, ``num_outputs`` and ``output_activation`` plus the
experiment's ``model.params``, and expects an uncompiled tf.keras (tf_keras) model back.
"""

import tensorflow as tf


def residual_mlp(*, input_shape, num_outputs, output_activation, width=64, blocks=2):
    inputs = tf.keras.Input(shape=input_shape)
    x = tf.keras.layers.Dense(width, activation="relu")(tf.keras.layers.Flatten()(inputs))
    for _ in range(blocks):
        y = tf.keras.layers.Dense(width, activation="relu")(x)
        x = tf.keras.layers.LayerNormalization()(x + tf.keras.layers.Dense(width)(y))
    outputs = tf.keras.layers.Dense(num_outputs, activation=output_activation, dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name="residual_mlp")
