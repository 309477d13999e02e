"""The experiment schema: every mistake is reported with its file, line and dotted path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from raytrain.config.loader import load_experiment
from raytrain.config.schema import Experiment
from raytrain.errors import SpecError

from .conftest import REPO, write_yaml

BAD_FILES = [
    # (yaml, overrides, expected message fragments: each must appear in one problem line)
    ("data:\n  source: [a\n", [], ["exp.yaml:3:1: YAML syntax error"]),
    (
        "data:\n  validaton_split: 0.3\n",
        [],
        [
            "exp.yaml:2: data.validaton_split: unknown key 'validaton_split'; did you mean "
            "'validation_split'?"
        ],
    ),
    (
        "trian:\n  epochs: 3\n",
        [],
        ["exp.yaml:1: trian: unknown key 'trian'; did you mean 'train'?"],
    ),
    (
        "train:\n  epochs: 0\n",
        [],
        ["exp.yaml:2: train.epochs: Input should be greater than or equal to 1 (got 0)"],
    ),
    (
        "train:\n  epochs: three\n",
        [],
        ["exp.yaml:2: train.epochs: Input should be a valid integer"],
    ),
    (
        "train:\n  optimizer:\n    name: adma\n",
        [],
        ["exp.yaml:3: train.optimizer.name: Input should be 'adam'"],
    ),
    (
        "train:\n  optimizer: {learning_rate: -0.1}\n",
        [],
        ["exp.yaml:2: train.optimizer.learning_rate: Input should be greater than 0 (got -0.1)"],
    ),
    (
        "train:\n  metrics:\n    - accuracy\n    - acuracy\n",
        [],
        ["exp.yaml:4: train.metrics[1]: Input should be"],
    ),
    (
        "data:\n  validation_split: 1.5\n",
        [],
        ["exp.yaml:2: data.validation_split: Input should be less than 1 (got 1.5)"],
    ),
    (
        "data:\n  source: builtin:digitz\n",
        [],
        ["exp.yaml:2: data.source: unknown built-in dataset 'digitz'"],
    ),
    ("data:\n  source: missing/*.csv\n", [], ["exp.yaml:2: data.source: no file matches"]),
    (
        "data:\n  source: builtin:digits\n  streaming: true\n",
        [],
        ["exp.yaml:3: data.streaming: built-in datasets are small and read whole"],
    ),
    (
        "model:\n  builder: cnn\n  params:\n    filters: [8, 16]\n    dropot: 0.1\n",
        [],
        ["exp.yaml:5: model.params.dropot: unknown parameter 'dropot' of this builder"],
    ),
    (
        "model:\n  builder: cnn\n  params: {kernel_size: 0}\n",
        [],
        ["exp.yaml:3: model.params.kernel_size: Input should be greater than or equal to 1"],
    ),
    (
        "model:\n  builder: nosuchpkg.models:build\n",
        [],
        ["exp.yaml:2: model.builder: cannot import 'nosuchpkg.models'"],
    ),
    (
        "model:\n  builder: transformer\n",
        [],
        ["exp.yaml:2: model.builder: 'transformer' is neither a built-in builder"],
    ),
    (
        "train:\n  batch_size: 65\nscaling:\n  num_workers: 2\n",
        [],
        [
            "exp.yaml:2: train.batch_size: the global batch size (65) must split evenly across scaling.num_workers (2)"
        ],
    ),
    (
        "checkpoint:\n  score: val_acc\n",
        [],
        [
            "exp.yaml:2: checkpoint.score: 'val_acc' is not a reported metric; expected one of: accuracy, loss, val_accuracy, val_loss"
        ],
    ),
    (
        "train:\n  loss: mean_squared_error\n",
        [],
        [
            "exp.yaml:2: train.loss: 'mean_squared_error' is a regression loss, but train.metrics has classification metrics (accuracy)"
        ],
    ),
    (
        "scaling:\n  num_workers: -1\n",
        [],
        ["exp.yaml:2: scaling.num_workers: Input should be greater than or equal to 1 (got -1)"],
    ),
    (
        "scaling:\n  resources_per_worker: {CPU: -2}\n",
        [],
        ["exp.yaml:2: scaling.resources_per_worker.CPU: must be >= 0 (got -2.0)"],
    ),
    (
        "storage: s3://bucket/x\n",
        [],
        [
            "exp.yaml:1: storage: 's3://bucket/x': storage must be a local folder or gs://bucket/prefix"
        ],
    ),
    ("name: my experiment!\n", [], ["exp.yaml:1: name: String should match pattern"]),
    (  # the run's storage folder: never outside the storage root
        "tracking:\n  run_name: ../escape\n",
        [],
        ["exp.yaml:2: tracking.run_name: String should match pattern"],
    ),
    ("train:\n  epochs: 3\n  epochs: 4\n", [], ["exp.yaml:3: train.epochs: duplicate key"]),
    ("- just\n- a list\n", [], ["exp.yaml:1: the experiment must be a mapping"]),
    (
        "train:\n  epochs: 3\n",
        ["train.epochs=abc"],
        ["--set train.epochs=abc: train.epochs: Input should be a valid integer"],
    ),
    (
        "train:\n  epochs: 3\n",
        ["scaling.num_workerz=3"],
        [
            "--set scaling.num_workerz=3: scaling.num_workerz: unknown key 'num_workerz'; did you mean 'num_workers'?"
        ],
    ),
    ("train:\n  epochs: 3\n", ["train.epochs"], ["--set train.epochs: expected KEY=VALUE"]),
    (
        "train:\n  epochs: 3\n",
        ["train.epochs.x=1"],
        ["--set train.epochs.x=1: train.epochs is not a section"],
    ),
]

# tune.space: every path exists, sampled values fit the field, ranges are well formed
BAD_FILES += [
    (
        "tune:\n  space:\n    train.epochz: {choice: [1, 2]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.epochz'].choice: value 1 does not fit train.epochz: unknown key 'epochz'; did you mean 'epochs'?"
        ],
    ),
    (
        "tune:\n  space:\n    train.optimizer.learning_rate: {uniform: [0.1, 0.01]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.optimizer.learning_rate'].uniform: low < high must hold, but got (low=0.1, high=0.01)"
        ],
    ),
    (
        "tune:\n  space:\n    train.optimizer.learning_rate: {loguniform: [0, 0.1]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.optimizer.learning_rate'].loguniform: loguniform needs low > 0, but got low=0"
        ],
    ),
    (
        "tune:\n  space:\n    train.batch_size: {choice: [32, big]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.batch_size'].choice: value 'big' does not fit train.batch_size: Input should be a valid integer"
        ],
    ),
    (
        "tune:\n  space:\n    model.params.dropout: {uniform: [0.1, 1.5]}\n",
        [],
        [
            "exp.yaml:3: tune.space['model.params.dropout'].uniform: value 1.5 does not fit model.params.dropout: Input should be less than 1"
        ],
    ),
    (
        "tune:\n  space:\n    train.epochs: {between: [1, 3]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.epochs']: expected one of {uniform, loguniform, quniform, qloguniform, randint, choice, grid}"
        ],
    ),
    (
        "tune:\n  space:\n    train.epochs: {grid: [1, 2]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.epochs'].grid: grid values need tune.search.algorithm: grid"
        ],
    ),
    (
        "tune:\n  metric: val_acc\n  space:\n    train.epochs: {choice: [1, 2]}\n",
        [],
        ["exp.yaml:2: tune.metric: 'val_acc' is not a reported metric"],
    ),
    (
        "tune:\n  metric: [val_accuracy, param_count]\n  mode: max\n  space:\n    train.epochs: {choice: [1, 2]}\n",
        [],
        ["exp.yaml:3: tune.mode: 2 metric(s) need as many modes, got 1"],
    ),
    ("tune:\n  space: {}\n", [], ["exp.yaml:2: tune.space: the search space is empty"]),
    (
        "tune:\n  space:\n    train.epochs: {uniform: [1, 5]}\n",
        [],
        [
            "exp.yaml:3: tune.space['train.epochs'].uniform: train.epochs takes whole numbers, "
            "and uniform draws fractions such as 2.528: use randint: [1, 5] or choice"
        ],
    ),
    (  # the ends fit (1 and 4 workers split a batch of 64), a value between does not
        "train:\n  batch_size: 64\ntune:\n  space:\n    scaling.num_workers: {randint: [1, 4]}\n",
        [],
        [
            "exp.yaml:5: tune.space['scaling.num_workers'].randint: value 3 does not fit "
            "scaling.num_workers: the global batch size (64) must split evenly"
        ],
    ),
    (  # a wide range: its values are probed one after another first, then spread
        "scaling:\n  num_workers: 2\ntune:\n  space:\n    train.batch_size: {randint: [16, 512]}\n",
        [],
        ["exp.yaml:5: tune.space['train.batch_size'].randint: value 17 does not fit"],
    ),
    (
        "tune:\n  space:\n    train.epochs: {quniform: [2, 6, 0.5]}\n",
        [],
        ["tune.space['train.epochs'].quniform: value 2.5 does not fit train.epochs"],
    ),
    (
        "scaling:\n  allreduce_dtype: bfloat16\ntrain:\n  mixed_precision: mixed_float16\n",
        [],
        ["exp.yaml:2: scaling.allreduce_dtype: mixed_float16 scales the loss"],
    ),
    (
        "scaling:\n  accelerator: tpu\n  num_workers: 2\n",
        [],
        [
            "exp.yaml:3: scaling.num_workers: accelerator: tpu trains on one TPU VM host",
            "scaling.resources_per_worker: accelerator: tpu needs the host's TPU chips",
        ],
    ),
    (
        "tune:\n  space:\n    storage: {choice: [a, b]}\n",
        [],
        ["exp.yaml:3: tune.space.storage.choice: 'storage' cannot be swept"],
    ),
]


@pytest.mark.parametrize(("text", "overrides", "expected"), BAD_FILES)
def test_bad_file_reports_path_and_line(
    tmp_path: Path, text: str, overrides: list[str], expected: list[str]
) -> None:
    path = write_yaml(tmp_path, text)
    named = overrides if text.startswith("name:") else ["name=t", *overrides]  # it is required
    with pytest.raises(SpecError) as caught:
        load_experiment(path, named)
    problems = caught.value.problems
    for fragment in expected:
        hits = [p for p in problems if fragment.replace("exp.yaml", str(path)) in p]
        assert hits, f"{fragment!r} not in {problems}"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        name: t
        data:
          validaton_split: 0.3
        train:
          epochs: 0
          optimizer: {name: adma}
        """,
    )
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    assert len(caught.value.problems) == 3


def test_spec_error_survives_pickling() -> None:
    error = SpecError(["a.yaml:3: train.epochs: bad"])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == "a.yaml:3: train.epochs: bad"


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read experiment file"):
        load_experiment(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_says_what_an_experiment_needs(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    assert caught.value.problems == [
        f"{path}:1: the experiment is empty; an experiment needs at least name (e.g. "
        "`name: digits-mlp`): every other field has a default, and `data.source` defaults to "
        "builtin:digits"
    ]


def test_a_name_is_all_an_experiment_needs(tmp_path: Path) -> None:
    loaded = load_experiment(write_yaml(tmp_path, "name: minimal\n"))
    assert loaded.spec == Experiment(name="minimal")
    assert loaded.spec.data.source == "builtin:digits"
    with pytest.raises(SpecError) as caught:
        load_experiment(write_yaml(tmp_path, "train: {epochs: 2}\n"))
    assert caught.value.problems == [
        f"{tmp_path / 'exp.yaml'}:1: name: required: it names the experiment's storage folder "
        "and MLflow experiment"
    ]


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: t\ntrain:\n  epochs: 3\n")
    loaded = load_experiment(
        path, ["train.epochs=5", "model.params={hidden_units: [8]}", "scaling.num_workers=1"]
    )
    assert loaded.spec.train.epochs == 5
    assert loaded.spec.model.params == {"hidden_units": [8]}
    assert loaded.spec.scaling.num_workers == 1


def test_relative_data_path_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "d.csv").write_text("a,label\n1,0\n")
    path = write_yaml(tmp_path / "exp", "name: t\ndata:\n  source: d.csv\n")
    monkeypatch.chdir(tmp_path)
    assert load_experiment(path).spec.data.source == str(tmp_path / "exp" / "d.csv")
    # on the command line, a relative path is relative to where the user stands
    loaded = load_experiment(path, ["data.source=exp/d.csv"])
    assert loaded.spec.data.source == str(tmp_path / "exp" / "d.csv")


def test_user_builder_is_imported_from_the_experiment_folder(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text("def build(**kw):\n    return None\n")
    path = write_yaml(tmp_path, "name: t\nmodel:\n  builder: mymodels:build\n")
    assert load_experiment(path).spec.model.builder == "mymodels:build"
    bad = write_yaml(tmp_path, "name: t\nmodel:\n  builder: mymodels:nothere\n", "bad.yaml")
    with pytest.raises(SpecError, match="module 'mymodels' has no attribute 'nothere'"):
        load_experiment(bad)


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_experiments_are_valid(path: Path) -> None:
    assert load_experiment(path).spec.name


def test_json_schema_describes_every_field() -> None:
    schema = Experiment.model_json_schema()
    json.dumps(schema)
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        for field, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


def test_one_pass_reports_a_misspelled_sections_contents_and_the_rules(tmp_path: Path) -> None:
    """Fixing what validate lists never uncovers more: the misspelled section's own errors and
    the cross-field rules (model.params) come with the schema errors."""
    path = write_yaml(
        tmp_path,
        """
        name: t
        data:
          validation_split: 1.5
        trian:
          epochs: 0
        model:
          builder: mlp
          params:
            hidden_units: [-1]
        """,
    )
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    assert caught.value.problems == [
        f"{path}:3: data.validation_split: Input should be less than 1 (got 1.5)",
        f"{path}:4: trian: unknown key 'trian'; did you mean 'train'?",
        f"{path}:5: trian.epochs: Input should be greater than or equal to 1 (got 0)",
        f"{path}:9: model.params.hidden_units[0]: Input should be greater than 0 (got -1)",
    ]


def test_an_invalid_required_field_still_reports_the_others(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: two words\ntrain:\n  epochs: 0\n")
    with pytest.raises(SpecError) as caught:
        load_experiment(path)
    assert [p.split(": ")[1] for p in caught.value.problems] == ["name", "train.epochs"]
