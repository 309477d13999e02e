"""One problem of an experiment: where (a path of keys and list indices) and what is wrong."""

from typing import NamedTuple

__all__ = ["Problem"]


class Problem(NamedTuple):
    loc: tuple[str | int, ...]
    message: str
