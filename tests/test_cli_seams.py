"""Where the thin CLI meets the library, without Ray or TensorFlow: the options generated from
the spec models, the one error wrapper (exit statuses, settings shown as flags), and the
arguments a detached server is started with."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from raytrain.cli import app, reported
from raytrain.config.options import as_args, fields, flag, spec_options
from raytrain.config.schema import AutoscalingSpec, ExportSpec, ServeSpec
from raytrain.errors import RaytrainError, SpecError, StorageError, spell_options
from raytrain.serve import lifecycle
from raytrain.storage import check_location

# The serve flags as they were written by hand before they were generated: users' scripts use them.
SERVE_FLAGS = {
    "--num-replicas",
    "--max-batch-size",
    "--batch-wait-timeout-s",
    "--num-cpus",
    "--num-gpus",
    "--max-ongoing-requests",
    "--max-instances-per-request",
    "--max-body-mb",
    "--host",
    "--port",
    "--min-replicas",
    "--max-replicas",
    "--target-ongoing-requests",
}


def _options(name: str) -> dict[str, Any]:
    """The command's options by first flag (typer ships its own click: no isinstance)."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {p.opts[0]: p for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize(("command", "model"), [("serve", ServeSpec), ("export", ExportSpec)])
def test_every_spec_field_is_an_option_with_its_description(command: str, model: Any) -> None:
    options = _options(command)
    for _, name, field in fields(model):
        assert flag(name) in options, name
        assert options[flag(name)].help.startswith(field.description), name
        assert options[flag(name)].default is None  # unset: the experiment's value stays


def test_the_generated_flags_keep_their_names() -> None:
    assert set(_options("serve")) >= SERVE_FLAGS
    export = _options("export")
    assert {"--format", "--quantize", "--out", "--int8-io", "--representative-examples"} <= set(
        export
    )
    assert export["--quantize"].opts == ["--quantize", "-q"]
    assert export["--quantize"].multiple
    assert export["--int8-io"].secondary_opts == ["--no-int8-io"]
    autoscaling = {n for s, n, _ in fields(ServeSpec) if s == "autoscaling"}
    assert autoscaling == set(AutoscalingSpec.model_fields)


def test_generated_options_arrive_as_one_dict_shaped_like_the_model() -> None:
    seen: dict[str, Any] = {}
    demo = typer.Typer()

    @demo.command()
    @spec_options(ExportSpec, into="settings", aliases={"quantize": "-q"})
    def export(model: str, settings: Any = None, extra: int = 0) -> None:
        seen.update(model=model, settings=settings, extra=extra)

    args = ["m", "-q", "dynamic", "--quantize", "int8,float16", "--int8-io", "--extra", "3"]
    result = CliRunner().invoke(demo, args)
    assert result.exit_code == 0, result.output
    assert seen["model"] == "m"
    assert seen["extra"] == 3
    assert seen["settings"] == {
        "format": None,
        "quantize": ["dynamic", "int8,float16"],
        "representative_examples": None,
        "int8_io": True,
        "num_threads": None,
        "latency_runs": None,
        "out": None,
        "trust_pickled_models": None,
    }
    CliRunner().invoke(demo, ["m"])
    assert set(seen["settings"].values()) == {None}  # nothing given: nothing overridden


def test_a_nested_model_arrives_as_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    called = _fake_run_server(monkeypatch)
    args = ["serve", "m/1", "--max-batch-size", "8", "--min-replicas", "2", "--port", "8123"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = called["settings"]
    assert settings["max_batch_size"] == 8
    assert settings["port"] == 8123
    assert settings["autoscaling"] == {
        "min_replicas": 2,
        "max_replicas": None,
        "target_ongoing_requests": None,
    }
    assert settings["num_replicas"] is None


@pytest.mark.parametrize(
    "spec",
    [
        ServeSpec(),
        ServeSpec(
            autoscaling=AutoscalingSpec(
                min_replicas=0, max_replicas=5, target_ongoing_requests=2.5
            ),
            max_batch_size=8,
            batch_wait_timeout_s=0.0125,
            num_cpus=0.5,
            host="0.0.0.0",
            allow_unauthenticated=True,
            port=8123,
        ),
    ],
    ids=["defaults", "autoscaling"],
)
def test_a_detached_server_gets_exactly_its_settings(
    spec: ServeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``server_args`` rebuilds the command line from the resolved settings (no experiment file,
    no sys.argv); the CLI parses it back into the same settings."""
    args = lifecycle.server_args(
        "digits/2",
        tracking_uri="sqlite:////tmp/m.db",
        spec=spec,
        canary="digits/1",
        canary_percent=25.0,
        address="127.0.0.1:6379",
        verbose=True,
    )
    assert "--detach" not in args
    assert args == [a for a in args if a]  # no empty arguments
    called = _fake_run_server(monkeypatch)
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    assert (called["model"], called["tracking_uri"]) == ("digits/2", "sqlite:////tmp/m.db")
    assert (called["canary"], called["canary_percent"]) == ("digits/1", 25.0)
    assert (called["address"], called["verbose"], called["detach"]) == (
        "127.0.0.1:6379",
        True,
        False,
    )
    _, _, rebuilt = lifecycle.serve_settings(
        called["model"], tracking_uri=called["tracking_uri"], flags=called["settings"]
    )
    assert rebuilt == spec


def test_as_args_spells_every_kind_of_value() -> None:
    args = as_args(ExportSpec(quantize=["none", "int8"], int8_io=True, out="/x"))
    assert args[:6] == ["--format", "tflite", "--quantize", "none", "--quantize", "int8"]
    assert "--int8-io" in args
    assert args[args.index("--out") + 1] == "/x"
    assert "--no-int8-io" in as_args(ExportSpec())
    assert "--out" not in as_args(ExportSpec())  # None: left out


def _fake_run_server(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    called: dict[str, Any] = {}

    def run_server(model: str | None, **kwargs: Any) -> lifecycle.ServerRun:
        called.update(model=model, **kwargs)
        return lifecycle.ServerRun(8000, detached="started")

    monkeypatch.setattr(lifecycle, "run_server", run_server)
    return called


# ---- the one error wrapper ------------------------------------------------------------------


def test_a_spec_error_exits_2_with_its_problems(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_, reported():
        raise SpecError(
            ["`quantize` int4: Input should be 'none'", "b: wrong"], options=["quantize"]
        )
    assert exit_.value.exit_code == 2
    assert capsys.readouterr().err.splitlines() == [
        "--quantize int4: Input should be 'none'",
        "b: wrong",
        "2 problem(s) found",
    ]


def test_another_error_exits_1_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_, reported():
        raise StorageError("pass `tracking_uri` or `storage`", options=("tracking_uri",))
    assert exit_.value.exit_code == 1
    assert capsys.readouterr().err == "error: pass --tracking-uri or `storage`\n"


def test_ctrl_c_exits_130_only_where_a_message_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as exit_, reported("interrupted: bye"):
        raise KeyboardInterrupt
    assert exit_.value.exit_code == 130
    assert capsys.readouterr().err == "interrupted: bye\n"
    with pytest.raises(KeyboardInterrupt), reported():
        raise KeyboardInterrupt


def test_commands_keep_their_exit_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYTRAIN_HOME", str(tmp_path))
    runner = CliRunner()
    stopped = runner.invoke(app, ["serve", "--stop", "--port", "8123"])
    assert stopped.exit_code == 1
    assert stopped.output.startswith("error: no raytrain server on port 8123")
    nothing = runner.invoke(app, ["serve"])
    assert nothing.exit_code == 1
    assert nothing.output == (
        "error: name a model (NAME, NAME@ALIAS or NAME/VERSION) or pass --experiment\n"
    )
    bad = runner.invoke(app, ["serve", "m", "--max-batch-size", "0"])
    assert bad.exit_code == 1
    assert "error: serve.max_batch_size: Input should be greater than or equal to 1" in bad.output
    missing = runner.invoke(app, ["serve", "--experiment", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2
    assert "1 problem(s) found" in missing.output
    assert "Traceback" not in stopped.output + nothing.output + bad.output + missing.output


# ---- settings named by the library, shown as flags by the CLI --------------------------------


def test_library_errors_name_settings_and_the_cli_spells_them() -> None:
    with pytest.raises(StorageError) as info:
        check_location("gs://", what="`storage`", options=("storage",))
    assert str(info.value) == "`storage` 'gs://': expected gs://BUCKET/PREFIX"
    assert info.value.spelled(flag) == "--storage 'gs://': expected gs://BUCKET/PREFIX"
    assert spell_options("`a_b` and `c`", ["a_b"], flag) == "--a-b and `c`"


def test_options_survive_pickling() -> None:
    """Errors cross Ray's process boundaries: the settings they name go along."""
    for error in (
        RaytrainError("pass `experiment`", options=("experiment",)),
        StorageError("`storage` 'x'", options=["storage"]),
        SpecError(["`out` 3: bad"], options=["out"]),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (str(copy), copy.options) == (str(error), error.options)
    assert pickle.loads(pickle.dumps(SpecError(["p"]))).problems == ["p"]


def test_help_validate_and_the_serve_lifecycle_load_no_tensorflow_or_ray() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from raytrain.cli import app\n"
        "import raytrain.serve.lifecycle\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "validate = ['validate', 'experiments/quickstart.yaml']\n"
        "assert CliRunner().invoke(app, validate).exit_code == 0\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'ray', 'mlflow'})\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bad_export_options_name_the_setting() -> None:
    from raytrain.export.tflite import _settings

    with pytest.raises(SpecError) as info:
        _settings(None, {"quantize": ["int4"], "format": None})
    assert info.value.options == ("quantize",)
    assert [spell_options(p, info.value.options, flag) for p in info.value.problems] == [
        "--quantize int4: Input should be 'none', 'float16', 'dynamic' or 'int8'"
    ]
    assert _settings(None, {"quantize": ["dynamic,int8"], "int8_io": None}).quantize == [
        "dynamic",
        "int8",
    ]
