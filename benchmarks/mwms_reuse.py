"""Can a worker group's processes train a second MultiWorkerMirroredStrategy run (the next sweep
trial) once they trained one? Two processes build the strategy, train a few steps, then do it
again, either with the same ``TF_CONFIG`` (the same ports) or a new one.

    python -m benchmarks.mwms_reuse same   # second run with the same cluster spec
    python -m benchmarks.mwms_reuse new    # second run with new ports

Prints one line per process and attempt; a second attempt that never prints hung (the command
stops both processes after a timeout, 120 s or the second argument, and says so).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(mode: str, timeout_s: float = 120.0) -> None:
    ports = [[_port(), _port()], [_port(), _port()]]
    if mode == "same":
        ports[1] = ports[0]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.mwms_reuse", "worker", str(i), json.dumps(ports)]
        )
        for i in range(2)
    ]
    for child in children:
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"a worker did not finish in {timeout_s:.0f} s: stopped")
            for other in children:
                other.kill()
            return


def worker(index: int, ports: list[list[int]]) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    for attempt, pair in enumerate(ports):
        cluster = {"worker": [f"127.0.0.1:{p}" for p in pair]}
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse")
        data = tf.data.Dataset.from_tensor_slices((tf.ones((64, 4)), tf.ones((64, 1))))
        history = model.fit(data.batch(16).repeat(), epochs=1, steps_per_epoch=4, verbose=0)
        loss = history.history["loss"][-1]
        print(
            f"worker {index}, attempt {attempt}: trained (loss {loss:.4f}) on {cluster}", flush=True
        )


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(int(sys.argv[2]), json.loads(sys.argv[3]))
    else:
        main(sys.argv[1], *(float(a) for a in sys.argv[2:3]))
