"""Model builders: built-ins, a user's import path, and the baked-in feature scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raytrain.config.schema import DataSpec, ModelSpec
from raytrain.data.dataset import load_dataset
from raytrain.errors import ModelBuildError
from raytrain.models import build_model

from .conftest import REPO

CE = "sparse_categorical_crossentropy"


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec(source="builtin:digits"), loss=CE)


@pytest.mark.parametrize("builder", ["mlp", "cnn"])
def test_builtin_builders_predict_class_probabilities(digits, builder: str) -> None:
    model = build_model(ModelSpec(builder=builder), digits.info, loss=CE)
    assert type(model).__module__.startswith("tf_keras")  # Keras 2: what MWMS needs
    probs = model.predict(digits.x_val[:4], verbose=0)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_model_takes_raw_features_and_scales_them(digits) -> None:
    model = build_model(ModelSpec(builder="mlp"), digits.info, loss=CE)
    scaled = model.get_layer("feature_scaling")(digits.x_train).numpy()
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-4)


def test_regression_head_is_linear() -> None:
    data = load_dataset(DataSpec(source="builtin:diabetes"), loss="mean_squared_error")
    model = build_model(ModelSpec(builder="mlp"), data.info, loss="mean_squared_error")
    assert model.output_shape == (None, 1)
    assert model.layers[-1].layers[-1].activation.__name__ == "linear"


def test_user_builder_from_an_import_path(digits) -> None:
    spec = ModelSpec(builder="my_models:residual_mlp", params={"width": 16, "blocks": 1})
    model = build_model(spec, digits.info, loss=CE, base_dir=REPO / "experiments")
    assert model.predict(digits.x_val[:2], verbose=0).shape == (2, 10)


def test_cnn_refuses_flat_features() -> None:
    data = load_dataset(DataSpec(source="builtin:wine"), loss=CE)
    with pytest.raises(ModelBuildError, match="the cnn builder needs images"):
        build_model(ModelSpec(builder="cnn"), data.info, loss=CE)


def test_user_builder_returning_something_else(tmp_path: Path, digits) -> None:
    (tmp_path / "weird.py").write_text("def build(**kwargs):\n    return 42\n")
    with pytest.raises(ModelBuildError, match=r"returned int, not a tf\.keras\.Model"):
        build_model(ModelSpec(builder="weird:build"), digits.info, loss=CE, base_dir=tmp_path)


def test_user_builder_raising(tmp_path: Path, digits) -> None:
    (tmp_path / "broken.py").write_text("def build(**kwargs):\n    raise ValueError('nope')\n")
    with pytest.raises(ModelBuildError, match="'broken:build' failed: ValueError: nope"):
        build_model(ModelSpec(builder="broken:build"), digits.info, loss=CE, base_dir=tmp_path)


def test_each_experiment_gets_the_builder_of_its_own_folder(tmp_path: Path) -> None:
    """One process, two experiments whose folders each hold a ``shared.py``: each gets its own
    (a notebook, a test session); the first one's stays the first one's."""
    from raytrain.config.resolve import load_builder

    for name in ("a", "b"):
        (tmp_path / name / "pkg").mkdir(parents=True)
        (tmp_path / name / "shared.py").write_text(f"def build(**kwargs):\n    return {name!r}\n")
        (tmp_path / name / "pkg" / "__init__.py").write_text("")
        (tmp_path / name / "pkg" / "mod.py").write_text(f"def build():\n    return {name!r}\n")
    for name in ("a", "b", "a"):
        for builder in ("shared:build", "pkg.mod:build"):
            build = load_builder(builder, base_dir=tmp_path / name)
            assert build() == name, (builder, name)  # type: ignore[operator]
