"""One side of ``sweep_overhead`` in a fresh process, with a timestamp (``time.time()``) for
every trial event.

    python -m benchmarks.sweep_child optuna SPEC_FILE OUT_JSON
    python -m benchmarks.sweep_child raytrain SPEC_FILE OUT_JSON

``optuna``: what a user writes without Ray: an Optuna study in one process that trains each
configuration of the experiment's grid with tf_keras (the same model, data, epochs, batch and
seed, TensorFlow's default threads), one trial after another. ``raytrain``: ``run_sweep`` (what
``raytrain run`` calls) on a private local Ray instance it starts.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def optuna_side(spec_file: str) -> list[dict[str, Any]]:
    import optuna

    from benchmarks.plain_keras import tf
    from raytrain.config.loader import load_experiment
    from raytrain.data.dataset import load_dataset, make_tf_dataset
    from raytrain.models import build_model
    from raytrain.sweep.space import apply_config
    from raytrain.train.worker import build_optimizer

    base = load_experiment(spec_file).spec
    assert base.tune is not None
    ((key, entry),) = base.tune.space.items()
    grid = entry["grid"]
    data = load_dataset(base.data, loss=base.train.loss)
    events: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        trial_id = str(trial.number)
        events.append({"kind": "start", "trial_id": trial_id, "t": time.time()})
        spec = apply_config(base, {key: trial.suggest_categorical(key, grid)})
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(spec.train.seed)
        batch = spec.train.batch_size
        train = make_tf_dataset(data.x_train, data.y_train, batch_size=batch, shuffle=True, seed=0)
        val = make_tf_dataset(data.x_val, data.y_val, batch_size=batch, shuffle=False, seed=0)
        model = build_model(spec.model, data.info, loss=spec.train.loss)
        model.compile(optimizer=build_optimizer(spec), loss=spec.train.loss, metrics=["accuracy"])
        reported = tf.keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: events.append(
                {"kind": "result", "trial_id": trial_id, "t": time.time(), **logs}
            )
        )
        history = model.fit(
            train, validation_data=val, epochs=spec.train.epochs, callbacks=[reported], verbose=0
        )
        events.append({"kind": "finished", "trial_id": trial_id, "t": time.time()})
        return max(history.history["val_accuracy"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.GridSampler({key: grid}, seed=0)
    optuna.create_study(direction="maximize", sampler=sampler).optimize(
        objective, n_trials=len(grid)
    )
    return events


def raytrain_side(spec_file: str) -> list[dict[str, Any]]:
    from raytrain.config.loader import load_experiment
    from raytrain.orchestration.sweep import run_sweep

    events: list[dict[str, Any]] = []
    run_sweep(load_experiment(spec_file), on_event=lambda e: events.append({**e, "t": time.time()}))
    return events


def main(side: str, spec_file: str, out: str) -> None:
    began = time.time()
    events = (optuna_side if side == "optuna" else raytrain_side)(spec_file)
    with open(out, "w") as handle:
        json.dump({"python": began, "events": events}, handle, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
