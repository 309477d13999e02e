"""docs/tutorials/first-model.md, run as a reader runs it: every block marked ``tutorial: run``,
exactly as printed, in order, in one empty folder, each exiting 0 and printing what its mark
expects; the blocks marked ``tutorial: file NAME`` written to NAME first (tests/docs_blocks.py).

As printed, with three things of the test machine's own: ``raytrain``, ``python`` and ``mlflow``
on PATH are this checkout's (what ``source .venv/bin/activate`` gives a reader);
``RAY_ADDRESS`` names the session's Ray instance, which every command joins where a reader's
starts a private one (seconds cheaper, and no Ray start to time out on a loaded machine); and
the HTTP port, 8000 on the page, is a free one. Serve is shut down on the shared instance at the
end, as every serving test does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ray import serve

from raytrain.cluster.connection import ClusterInfo

from .conftest import free_port
from .docs_blocks import TUTORIAL, Block, blocks

PAGE_PORT = "8000"


def _steps() -> list[Block]:
    return [b for b in blocks(TUTORIAL) if b.mark.startswith(("tutorial: run", "tutorial: file"))]


def test_every_command_block_of_the_tutorial_is_marked() -> None:
    """A bash block the test neither runs nor skips on purpose would rot unseen."""
    for block in blocks(TUTORIAL):
        if block.language == "bash":
            assert block.mark.startswith(("tutorial: run", "tutorial: skip")), block.where
    runs = [b for b in _steps() if b.mark.startswith("tutorial: run")]
    commands = " ".join(b.text for b in runs)
    for command in ["raytrain validate", "raytrain run", "raytrain serve", "curl", "export"]:
        assert command in commands
    assert all(b.expected for b in runs), "every run block says what it must print"


def _on_port(text: str, port: str) -> str:
    """``text`` with the page's HTTP port replaced by the test's free one."""
    return text.replace(f":{PAGE_PORT}", f":{port}").replace(f"port {PAGE_PORT}", f"port {port}")


def _path_with_this_checkout(bin_dir: Path) -> str:
    bin_dir.mkdir()
    for name, command in {
        "raytrain": f'"{sys.executable}" -m raytrain',
        "python": f'"{sys.executable}"',
        "mlflow": f'"{sys.executable}" -m mlflow',
    }.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_the_tutorial_runs_as_printed(ray_cluster: ClusterInfo, tmp_path: Path) -> None:
    work = tmp_path / "my-digits"
    work.mkdir()
    port = str(free_port())
    env = {
        **os.environ,
        "PATH": _path_with_this_checkout(tmp_path / "bin"),
        "RAYTRAIN_HOME": str(tmp_path / "raytrain-home"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "RAY_ADDRESS": ray_cluster.address,
    }
    served = False
    try:
        for step in _steps():
            if step.mark.startswith("tutorial: file"):
                (work / step.mark.split()[-1]).write_text(step.text)
                continue
            script = _on_port(step.text, port)
            serving = "raytrain serve" in script
            served = served or (serving and "--stop" not in script)
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            output = result.stdout + result.stderr
            print(f"--- {step.where}\n{output}")  # shown by pytest -s, and on a failure
            assert result.returncode == 0, f"{step.where} exited {result.returncode}:\n{output}"
            for text in step.expected:
                expected = _on_port(text, port)
                assert expected in output, f"{step.where} did not print {expected!r}:\n{output}"
            if "--stop" in script:
                served = False
    finally:
        if served:  # a failed step must not leave the server running
            subprocess.run(
                [sys.executable, "-m", "raytrain", "serve", "--stop", "--port", port],
                env=env,
                capture_output=True,
                timeout=120,
            )
        serve.shutdown()  # the Ray instance is shared: leave no Serve actors to later tests
