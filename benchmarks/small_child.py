"""One side of ``small_run`` in a fresh process, with timestamps of its phases (``time.time()``).

    python -m benchmarks.small_child plain SPEC_FILE OUT_JSON
    python -m benchmarks.small_child raytrain SPEC_FILE OUT_JSON [ADDRESS]
    python -m benchmarks.small_child floor SPEC_FILE OUT_JSON [ADDRESS]

``plain``: what a user writes without Ray: tf_keras with TensorFlow's default threads, the same
model, data, global batch and epochs, then ``model.save``. ``raytrain``: the ``raytrain run``
command itself (``raytrain.cli``), with the library calls it makes wrapped to note the time.
``floor``: Ray Train alone, no raytrain: a run with the experiment's workers whose function only
imports TensorFlow and builds the strategy, no data, no model, no MLflow: what any Ray Train run
of a TensorFlow model pays before its first step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def plain(spec_file: str, out: str) -> None:
    marks: dict[str, float] = {"python": time.time()}
    from benchmarks.plain_keras import compiled, tf
    from raytrain.config.loader import load_experiment

    marks["imported"] = time.time()
    model, _, train, val = compiled(spec := load_experiment(spec_file).spec)
    epochs: list[dict[str, float]] = []
    ended = tf.keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: epochs.append({**logs, "t": time.time()})
    )
    marks["ready"] = time.time()
    model.fit(train, validation_data=val, epochs=spec.train.epochs, callbacks=[ended], verbose=0)
    model.save(str(Path(out).with_suffix(".keras")))
    marks["saved"] = time.time()
    _write(out, marks, epochs)


def raytrain_cli(spec_file: str, out: str, address: str | None) -> None:
    marks: dict[str, float] = {"python": time.time()}
    import raytrain.orchestration.prepare as prepare_module
    import raytrain.orchestration.run as run_module
    from raytrain import cli

    marks["imported"] = time.time()
    epochs: list[dict[str, float]] = []
    connect, run_experiment = prepare_module.connect, run_module.run_experiment

    def timed_connect(*args: Any, **kwargs: Any) -> Any:
        marks["ray_init"] = time.time()
        info = connect(*args, **kwargs)
        marks["ray_ready"] = time.time()
        return info

    def timed_run(loaded: Any, *, on_epoch: Any, on_start: Any, **kwargs: Any) -> Any:
        def started(state: Any) -> None:
            marks["training"] = time.time()
            on_start(state)

        def epoch(event: dict[str, Any]) -> None:
            epochs.append({**event, "t": time.time()})
            on_epoch(event)

        summary = run_experiment(loaded, on_epoch=epoch, on_start=started, **kwargs)
        marks["logged"] = time.time()
        return summary

    def timed_finish(*args: Any, **kwargs: Any) -> Any:
        marks["trained"] = time.time()  # Ray Train's fit returned: the workers are gone
        return finish(*args, **kwargs)

    finish = run_module._finish
    prepare_module.connect, run_module.run_experiment = timed_connect, timed_run
    run_module._finish = timed_finish
    try:
        cli.app(["run", spec_file, *(["--address", address] if address else [])], "raytrain")
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        _write(out, marks, epochs)


def floor(spec_file: str, out: str, address: str | None) -> None:
    marks: dict[str, float] = {"python": time.time()}
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raytrain.cluster.connection import WORKER_ENV
    from raytrain.config.loader import load_experiment
    from raytrain.train.backend import KerasBackendConfig

    spec = load_experiment(spec_file).spec
    marks["imported"] = marks["ray_init"] = time.time()
    ray.init(address=None if address == "local" else "auto", runtime_env={"env_vars": WORKER_ENV})
    marks["ray_ready"] = marks["training"] = time.time()
    DataParallelTrainer(
        _strategy_only,
        backend_config=KerasBackendConfig(),
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            resources_per_worker=spec.scaling.resources_per_worker,
        ),
        run_config=RunConfig(storage_path=str(Path(out).parent / "floor")),
    ).fit()
    marks["trained"] = marks["logged"] = time.time()
    _write(out, marks, [])


def _strategy_only() -> None:
    import tensorflow as tf

    tf.distribute.MultiWorkerMirroredStrategy()


def _write(out: str, marks: dict[str, float], epochs: list[dict[str, Any]]) -> None:
    numbers = [{k: v for k, v in e.items() if isinstance(v, int | float)} for e in epochs]
    Path(out).write_text(json.dumps({"marks": marks, "epochs": numbers}))


if __name__ == "__main__":
    if sys.argv[1] == "plain":
        plain(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "floor":
        floor(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "auto")
    else:
        raytrain_cli(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
