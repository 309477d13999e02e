"""One side of tests/test_tf_versions.py, run by the interpreter of one TensorFlow version.

    python tf_versions_child.py [--raytrain] STEP...      STEP: write:FOLDER or read:FOLDER

write: trains a tiny tf_keras model one epoch and writes it with raytrain's checkpoint writer
(raytrain/train/checkpoint.py, loaded from its file: the other venv has TensorFlow only), with
its predictions on fixed inputs in the checkpoint's metrics. read: loads that checkpoint the
ways raytrain does (the whole model, as load_model does; the weights, as restore does),
evaluates it, exports it (SavedModel, then TFLite), and checks every result against what the
writer recorded. --raytrain reads through raytrain's own load_model and TFLite export (the
pinned venv, where all of raytrain imports). Prints one JSON line per step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("checkpoint", ROOT / "raytrain/train/checkpoint.py")
checkpoint = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(checkpoint)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 8)).astype("float32")
Y = RNG.integers(0, 3, size=64)
TOLERANCE = 1e-5


def build() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Input(shape=(8,)),
            tf.keras.layers.Dense(16, activation="relu"),
            tf.keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def write(folder: Path) -> dict:
    model = build()
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0)  # optimizer state in the weights
    loss, accuracy = model.evaluate(X, Y, verbose=0)
    folder.mkdir(parents=True)
    metrics = {"loss": loss, "accuracy": accuracy, "probe": model.predict(X[:4], verbose=0)}
    epoch = {"epoch": 1, **metrics, "probe": metrics["probe"].tolist()}
    checkpoint.write(model, str(folder), history=[epoch])
    return {"step": "write", "tensorflow": tf.__version__, "loss": loss}


def read(folder: Path, *, with_raytrain: bool) -> dict:
    state = json.loads((folder / checkpoint.STATE_FILE).read_text())["metrics"]
    probe = np.array(state["probe"], dtype="float32")
    resumed = build()  # what restore does in a restarted worker
    resumed.load_weights(str(folder / checkpoint.WEIGHTS))
    same_weights = np.allclose(resumed.predict(X[:4], verbose=0), probe, atol=TOLERANCE)
    loss, accuracy = resumed.evaluate(X, Y, verbose=0)
    try:
        if with_raytrain:
            from raytrain.train.checkpoint import load_model

            model = load_model(str(folder))
        else:  # what load_model does once Ray hands it the folder
            model = tf.keras.models.load_model(str(folder / checkpoint.MODEL_FILE), compile=False)
        model_error = None
        same_model = np.allclose(model.predict(X[:4], verbose=0), probe, atol=TOLERANCE)
    except (TypeError, ValueError) as exc:  # a model file from a newer tf_keras
        model, model_error, same_model = resumed, f"{type(exc).__name__}: {exc}", False

    with tempfile.TemporaryDirectory() as tmp:  # raytrain's export: SavedModel, then TFLite
        saved = Path(tmp, "saved_model")
        model.save(str(saved), save_format="tf")
        if with_raytrain:
            from raytrain.export.tflite import tflite_predict, to_tflite

            content = to_tflite(saved, "none", representative=X[:8])
            exported = tflite_predict(content, X[:4])
        else:
            content = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
            interpreter = tf.lite.Interpreter(model_content=content)
            interpreter.allocate_tensors()
            (entry,), (exit_,) = interpreter.get_input_details(), interpreter.get_output_details()
            exported = []
            for row in X[:4]:
                interpreter.set_tensor(entry["index"], row[None])
                interpreter.invoke()
                exported.append(interpreter.get_tensor(exit_["index"])[0])
    return {
        "step": "read",
        "tensorflow": tf.__version__,
        "same_model": bool(same_model),
        "model_error": model_error,
        "same_weights": bool(same_weights),
        "same_evaluation": bool(abs(loss - state["loss"]) < TOLERANCE)
        and bool(abs(accuracy - state["accuracy"]) < TOLERANCE),
        "same_export": bool(np.allclose(np.array(exported), probe, atol=TOLERANCE)),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    with_raytrain = "--raytrain" in args
    for step in (a for a in args if a != "--raytrain"):
        what, _, where = step.partition(":")
        result = (
            write(Path(where))
            if what == "write"
            else read(Path(where), with_raytrain=with_raytrain)
        )
        print(json.dumps(result), flush=True)
