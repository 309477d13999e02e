"""``python -m raytrain``: the same as the ``raytrain`` command."""

from raytrain.cli import app

app(prog_name="raytrain")
