"""Hostile and nonsensical experiment files: each answered in seconds, one line per problem,
never a traceback (YAML size, depth and aliases; strict integers; finite bounds; MLflow's text
limits; Ray's own resource names; empty token sources)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from raytrain.config.loader import load_experiment
from raytrain.errors import SpecError

BOMB = "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)
HOSTILE = [
    ("alias in itself", "name: x\nx: &a [1, *a]\n", r"^F:2: an alias refers to a value that holds it$"),
    ("section alias in itself", "name: x\ndata: &d\n  source: *d\n", r"^F:2: an alias refers to a value that holds it$"),
    ("alias bomb", "name: x\n" + BOMB, r"^F:\d+: more than 100000 values once aliases are expanded$"),
    ("deep flow", "name: x\nx: " + "[" * 50_000 + "]" * 50_000 + "\n", r"^F:2: nested more than 32 levels deep$"),
    ("deep block", "name: x\n" + "".join(" " * i + f"k{i}:\n" for i in range(40)) + " " * 40 + "v: 1\n", r"^F:33: nested more than 32 levels deep$"),
    ("deep by aliases", "name: x\na: &a " + "[" * 20 + "1" + "]" * 20 + "\nb: &b " + "[" * 20 + "*a" + "]" * 20 + "\n", r"^F:2: nested more than 32 levels deep once aliases are expanded$"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_yaml_is_one_line_within_seconds(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    assert time.perf_counter() - started < 5
    assert len(caught.value.problems) == 1
    assert re.match(message.replace("F", re.escape(str(path)), 1), caught.value.problems[0])


def test_invalid_utf8_names_the_byte_and_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    with pytest.raises(SpecError, match=r": not UTF-8: byte 0xe9 at offset 24 \(invalid contin"):
        load_experiment(path)


def test_a_file_over_256_kib_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\n" + "# padding\n" * 30_000)
    with pytest.raises(SpecError, match=r"exp\.yaml: the experiment file is over 262144 bytes$"):
        load_experiment(path)


NONSENSE = [
    ("train:\n  epochs: true\n", "train.epochs: Input should be a valid integer (got True)"),
    ("train:\n  batch_size: '64'\n", "train.batch_size: Input should be a valid integer (got '64')"),
    ("model:\n  params:\n    hidden_units: [64, true]\n", "model.params.hidden_units: Input should be a valid integer"),
    ("serve:\n  port: '8000'\n", "serve.port: Input should be a valid integer (got '8000')"),
    ("tune:\n  num_samples: 1000000000000\n", "tune.num_samples: Input should be less than or equal to 100000"),
    ("tune:\n  time_budget_s: .inf\n", "tune.time_budget_s: Input should be less than or equal to 31536000 (got inf)"),
    ("tune:\n  target: .nan\n", "tune.target: Input should be a finite number"),
    ("train:\n  batch_size: 100000000000\n", "train.batch_size: Input should be less than or equal to 1048576"),
    ("scaling:\n  resources_per_worker: {CPU: .inf}\n", "scaling.resources_per_worker.CPU: Input should be a finite number"),
    ("scaling:\n  resources_per_worker: {CPU: 1.0e+300}\n", "scaling.resources_per_worker.CPU: Input should be less than or equal to 1000000000000000 (got 1e+300)"),
    ("scaling:\n  num_workers: 100000\n", "scaling.num_workers: Input should be less than or equal to 1024"),
    ("failure:\n  max_failures: 1000000000\n", "failure.max_failures: Input should be less than or equal to 10000"),
    ("serve:\n  max_body_mb: .inf\n", "serve.max_body_mb: Input should be less than or equal to 1024 (got inf)"),
    ("serve:\n  request_timeout_s: 1.0e+30\n", "serve.request_timeout_s: Input should be less than or equal to 86400"),
    ("data:\n  seed: 100000000000\n", "data.seed: Input should be less than or equal to 4294967295"),
    ("data:\n  shape: [8, 100000000]\n", "data.shape[1]: Input should be less than or equal to 65536"),
    ("tracking:\n  tags: {k: " + "v" * 8001 + "}\n", "tracking.tags.k: String should have at most 8000 characters"),
    ("tracking:\n  tags: {" + "k" * 251 + ": v}\n", ".[key]: String should have at most 250 characters"),
    ("tracking:\n  experiment: " + "e" * 501 + "\n", "tracking.experiment: String should have at most 500 characters"),
    ("description: " + "d" * 8001 + "\n", "description: String should have at most 8000 characters"),
    ("tracking:\n  register_as: digits/cnn\n", "tracking.register_as: String should match pattern"),
    ("tracking:\n  register_as: digits@cnn\n", "tracking.register_as: String should match pattern"),
    ("tracking:\n  register_as: " + "m" * 256 + "\n", "tracking.register_as: String should match pattern"),
    ("data:\n  locality: GPU\n", "data.locality: Value error, GPU is a resource Ray defines itself; name a custom one"),
    ("data:\n  locality: object_store_memory\n", "data.locality: Value error, object_store_memory is a resource Ray defines itself"),
    ("data:\n  locality: node:10.0.0.1\n", "data.locality: String should match pattern"),
    ("serve:\n  auth_token_env: ''\n", "serve.auth_token_env: String should match pattern"),
    ("serve:\n  auth_token_file: ''\n", "serve.auth_token_file: String should have at least 1 character"),
    ("serve:\n  host: 0.0.0.0\n", "serve: Value error, host 0.0.0.0 is reachable from other machines"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    NONSENSE,
    ids=[t.split(":")[0] + ":" + e.split(":")[0] for t, e in NONSENSE],
)
def test_nonsense_is_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\n" + text)
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    problems = caught.value.problems
    assert any(expected in p and "\n" not in p for p in problems), problems


def test_whole_floats_still_fill_integers_as_sweeps_sample_them(tmp_path: Path) -> None:
    """quniform samples 32.0 for an integer such as batch_size: a number, not a boolean."""
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ntrain:\n  batch_size: 32.0\n")
    assert load_experiment(path).spec.train.batch_size == 32
