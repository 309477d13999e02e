"""One side of ``sweep_overhead`` in a fresh process, with a timestamp (``time.time()``) for
every trial event.

    python -m benchmarks.sweep_child optuna SPEC_FILE OUT_JSON
    python -m benchmarks.sweep_child tune_floor SPEC_FILE OUT_JSON
    python -m benchmarks.sweep_child raytrain SPEC_FILE OUT_JSON

``optuna``: what a user writes without Ray: an Optuna study in one process that trains each
configuration of the experiment's grid with tf_keras (the same model, data, epochs, batch and
seed, TensorFlow's default threads), one trial after another. ``tune_floor``: the same training
in Ray Tune function trials, nothing of raytrain's around it. ``raytrain``: ``run_sweep`` (what
``raytrain run`` calls) on a private local Ray instance it starts.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _grid(spec_file: str) -> tuple[Any, str, list[Any]]:
    from raytrain.config.loader import load_experiment

    base = load_experiment(spec_file).spec
    assert base.tune is not None
    ((key, entry),) = base.tune.space.items()
    return base, key, entry["grid"]


def _fit(spec: Any, data: Any, on_epoch: Any) -> float:
    """Plain tf_keras training of one configuration; ``on_epoch(logs)`` after each epoch."""
    from benchmarks.plain_keras import tf
    from raytrain.data.dataset import make_tf_dataset
    from raytrain.models import build_model
    from raytrain.train.worker import build_optimizer

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(spec.train.seed)
    batch = spec.train.batch_size
    train = make_tf_dataset(data.x_train, data.y_train, batch_size=batch, shuffle=True, seed=0)
    val = make_tf_dataset(data.x_val, data.y_val, batch_size=batch, shuffle=False, seed=0)
    model = build_model(spec.model, data.info, loss=spec.train.loss)
    model.compile(optimizer=build_optimizer(spec), loss=spec.train.loss, metrics=["accuracy"])
    reported = tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda _, logs: on_epoch(logs))
    history = model.fit(
        train, validation_data=val, epochs=spec.train.epochs, callbacks=[reported], verbose=0
    )
    return float(max(history.history["val_accuracy"]))


def optuna_side(spec_file: str) -> list[dict[str, Any]]:
    import optuna

    from raytrain.data.dataset import load_dataset
    from raytrain.sweep.space import apply_config

    base, key, grid = _grid(spec_file)
    data = load_dataset(base.data, loss=base.train.loss)
    events: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        trial_id = str(trial.number)
        events.append({"kind": "start", "trial_id": trial_id, "t": time.time()})
        spec = apply_config(base, {key: trial.suggest_categorical(key, grid)})
        best = _fit(
            spec,
            data,
            lambda logs: events.append(
                {"kind": "result", "trial_id": trial_id, "t": time.time(), **logs}
            ),
        )
        events.append({"kind": "finished", "trial_id": trial_id, "t": time.time()})
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.GridSampler({key: grid}, seed=0)
    optuna.create_study(direction="maximize", sampler=sampler).optimize(
        objective, n_trials=len(grid)
    )
    return events


def tune_floor_side(spec_file: str) -> list[dict[str, Any]]:
    """Ray Tune alone around the same plain tf_keras training: a private Ray instance, function
    trials of 1 CPU, 2 at a time, processes reused, each epoch reported; no MLflow, checkpoints,
    lineage or champion. What any sweep on Ray Tune pays on this machine."""
    import ray
    from ray import tune

    from raytrain.data.dataset import load_dataset
    from raytrain.sweep.space import apply_config

    base, key, grid = _grid(spec_file)
    data = load_dataset(base.data, loss=base.train.loss)

    def trainable(config: dict[str, Any], data: Any) -> None:
        spec = apply_config(base, {key: config[key]})
        _fit(spec, data, lambda logs: tune.report(dict(logs)))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    events: list[dict[str, Any]] = []

    class Timestamps(tune.Callback):
        def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            events.append({"kind": "start", "trial_id": trial.trial_id, "t": time.time()})

        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: Any, **info: Any
        ) -> None:
            events.append({"kind": "result", "trial_id": trial.trial_id, "t": time.time()})

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            events.append({"kind": "finished", "trial_id": trial.trial_id, "t": time.time()})

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), {"CPU": 1}),
        param_space={key: tune.grid_search(grid)},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(callbacks=[Timestamps()], verbose=0),
    )
    tuner.fit()
    ray.shutdown()
    return events


def raytrain_side(spec_file: str) -> list[dict[str, Any]]:
    from raytrain.config.loader import load_experiment
    from raytrain.orchestration.sweep import run_sweep

    events: list[dict[str, Any]] = []
    run_sweep(load_experiment(spec_file), on_event=lambda e: events.append({**e, "t": time.time()}))
    return events


def main(side: str, spec_file: str, out: str) -> None:
    began = time.time()
    sides = {"optuna": optuna_side, "tune_floor": tune_floor_side, "raytrain": raytrain_side}
    events = sides[side](spec_file)
    with open(out, "w") as handle:
        json.dump({"python": began, "events": events}, handle, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
