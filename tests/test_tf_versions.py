"""TPU hosts run TensorFlow 2.20 (PyPI's newest tensorflow-tpu), every other node the pinned 2.21:
a raytrain checkpoint must cross between them. Checked on CPU with a second venv that holds the
TPU hosts' TensorFlow version as its CPU build (`make tf-compat`, which CI runs before the
tests; the venv takes minutes to build, so the test skips until it exists rather than build it
itself). The TPU build itself is not run here: no TPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "tf_versions_child.py"
EXTRA = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
TPU_PINS = dict(re.match(r"([\w-]+)==(\S+)", pin).groups() for pin in EXTRA["tpu"])
TPU_TF = TPU_PINS["tensorflow-tpu"]
TPU_VENV = ROOT / f".venv-tf{''.join(TPU_TF.split('.')[:2])}"


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    found = (re.match(r"([\w.-]+)==(\S+)$", line) for line in lines if not line.startswith("#"))
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in found if m}


def test_tpu_constraints_follow_the_main_ones() -> None:
    """constraints-tpu.txt is constraints.txt with the TPU extra's TensorFlow and libtpu (the
    TPU hosts' alone): every other pin the same, so TPU hosts run the same Ray, MLflow and
    raytrain dependencies."""
    main, tpu = pins("constraints.txt"), pins("constraints-tpu.txt")
    tensorflow_family = {"tensorflow", "tensorflow-tpu", "tf-keras", "libtpu"}
    tensorflow_family |= {"tensorboard", "tensorboard-data-server"}
    assert "libtpu" not in main
    assert "libtpu" in tpu  # tensorflow-tpu names no upper bound: the Makefile's TPU_LIBTPU
    assert {k: v for k, v in main.items() if k not in tensorflow_family} == {
        k: v for k, v in tpu.items() if k not in tensorflow_family
    }
    assert tpu["tensorflow"] == tpu["tensorflow-tpu"] == TPU_TF
    assert tpu["tf-keras"] == TPU_PINS["tf-keras"]
    assert main["tensorflow"] != TPU_TF  # else the extra and this file are no longer needed


def run(python: Path | str, *steps: str) -> list[dict]:
    done = subprocess.run(
        [str(python), str(CHILD), *steps], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow  # three TensorFlow processes, ~1-3 minutes
@pytest.mark.skipif(
    not (TPU_VENV / ".installed").exists(), reason=f"run `make tf-compat` first ({TPU_VENV.name})"
)
def test_checkpoints_cross_between_the_tpu_and_the_pinned_tensorflow(tmp_path: Path) -> None:
    """Pinned -> TPU version: a restarted worker's restore (the weights) loads, evaluates to the
    same loss and accuracy and exports to TFLite with the same outputs; the whole-model file
    does not load (tf_keras 2.20 rejects InputLayer's `optional`, new in 2.21), which is why
    serving, export and load_model stay on the pinned nodes. TPU version -> pinned: everything,
    through raytrain's own load_model and TFLite export."""
    newer, older = tmp_path / "written-by-pinned", tmp_path / "written-by-tpu-version"
    (wrote_newer,) = run(sys.executable, f"write:{newer}")
    read_older, wrote_older = run(TPU_VENV / "bin" / "python", f"read:{newer}", f"write:{older}")
    (read_newer,) = run(sys.executable, "--raytrain", f"read:{older}")

    assert wrote_older["tensorflow"] == read_older["tensorflow"] == TPU_TF
    assert wrote_newer["tensorflow"] == read_newer["tensorflow"] != TPU_TF
    for side in (read_older, read_newer):
        checks = {k: side[k] for k in ("same_weights", "same_evaluation", "same_export")}
        assert all(checks.values()), side
    assert read_newer["same_model"], read_newer
    assert not read_older["same_model"]
    assert "Unrecognized keyword arguments: ['optional']" in read_older["model_error"]
