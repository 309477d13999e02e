"""The sweep's own state file: one typed model, read and written in one place (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytrain.config.schema import Experiment
from raytrain.errors import RaytrainError
from raytrain.sweep.state import STATE_FILE, SweepState
from raytrain.tracking.runs import TrackedRun


def _state(root: Path, **extra: object) -> SweepState:
    spec = Experiment.model_validate(
        {"name": "s", "tune": {"space": {"train.epochs": {"choice": [1, 2]}}}}
    )
    return SweepState(
        spec=spec,
        spec_file=str(root / "exp.yaml"),
        base_dir=str(root),
        storage_root=str(root / "results" / "s"),
        sweep_name="s-sweep-1",
        **extra,
    )


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    tracked = TrackedRun("sqlite:////x/mlflow.db", "s", "1", "abc")
    state = _state(tmp_path, tracked=tracked)
    state.save()
    path = tmp_path / "results" / "s" / "s-sweep-1" / STATE_FILE
    raw = json.loads(path.read_text())
    assert raw["tracking"] == {
        "uri": "sqlite:////x/mlflow.db",
        "experiment_name": "s",
        "experiment_id": "1",
        "run_id": "abc",
    }
    loaded = SweepState.load(state.folder)
    assert loaded == state
    assert loaded.tracked == tracked
    assert loaded.rounds == ["s-sweep-1"]


def test_update_saves_and_adds_rounds(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save()
    grown = state.update(extensions=["s-sweep-1-more-1"], registered={"t1": "3"})
    assert grown.rounds == ["s-sweep-1", "s-sweep-1-more-1"]
    again = SweepState.load(state.folder)
    assert again.registered == {"t1": "3"}
    assert again.finished == []


def test_a_state_file_from_an_older_sweep_without_progress_keys_loads(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save()
    path = Path(state.folder) / STATE_FILE
    raw = json.loads(path.read_text())
    for key in ("extensions", "finished", "registered"):
        del raw[key]
    path.write_text(json.dumps(raw))
    assert SweepState.load(state.folder).finished == []


def test_a_broken_state_file_is_one_line_naming_it(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save()
    path = Path(state.folder) / STATE_FILE
    raw = json.loads(path.read_text())
    raw["spec"]["train"]["epochs"] = "many"
    path.write_text(json.dumps(raw))
    with pytest.raises(
        RaytrainError, match=r"raytrain_sweep.json is not a sweep state .*spec\.train\.epochs"
    ):
        SweepState.load(state.folder)
