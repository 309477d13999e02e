"""One problem of an experiment: where (a path of keys and list indices) and what is wrong."""

import re
from typing import NamedTuple

from raytrain.secrets import MASK, is_secret_key

__all__ = ["Problem"]

_ECHOED = re.compile(r"\(got .*\)$")  # the value a schema error quotes, at its message's end


class _Fields(NamedTuple):
    loc: tuple[str | int, ...]
    message: str


class Problem(_Fields):
    """A problem whose message never quotes a value under a key that names a secret: the whole
    line is printed, and a wrong secret is still a secret."""

    __slots__ = ()

    def __new__(cls, loc: tuple[str | int, ...], message: str) -> "Problem":
        if any(isinstance(part, str) and is_secret_key(part) for part in loc):
            message = _ECHOED.sub(f"(got {MASK})", message)
        return super().__new__(cls, loc, message)
