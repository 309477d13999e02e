"""Labels as the model sees them, fixed by the training data: one coding for every split, so a
class means the same output in training, validation and test, in memory and streamed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytrain.errors import DataError

__all__ = ["LabelCoding", "check_classes", "class_text"]


@dataclass(frozen=True)
class LabelCoding:
    """Labels as the model sees them, fixed by the training data: class names (string labels,
    sorted) or class numbers (non-negative integers) or, for regression, numbers."""

    classification: bool
    names: list[str] | None = None
    classes: frozenset[str] = frozenset()  # every training class, as text
    num_classes: int | None = None

    @classmethod
    def fit(cls, y: np.ndarray, *, classification: bool) -> LabelCoding:
        if not classification:
            return cls(False)
        text = class_text(y)
        if y.dtype.kind in "iu" and len(y) and y.min() >= 0:
            return cls(True, None, frozenset(str(t) for t in text), int(y.max()) + 1)
        names = sorted({str(t) for t in text})
        return cls(True, names, frozenset(names), len(names))

    def encode(self, y: np.ndarray, *, split: str, source: str) -> np.ndarray:
        """``y`` as int32 class codes (float32 for regression); a class the training data
        never had is an error naming it."""
        if not self.classification:
            try:
                return y.astype(np.float32)
            except (TypeError, ValueError):
                raise DataError("regression labels must be numeric") from None
        text = class_text(y)
        check_classes(set(text), self.classes, split=split, source=source)
        if self.names is None:
            return text.astype(np.int64).astype(np.int32)
        return np.searchsorted(self.names, text).astype(np.int32)


def class_text(y: np.ndarray) -> np.ndarray:
    """Labels as text, whole floats as integers (3.0 -> "3"): the class a label names."""
    if y.dtype.kind == "f" and len(y) and np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    return y.astype(str)


def check_classes(found: set[str], known: frozenset[str], *, split: str, source: str) -> None:
    """A held-out label the model has no output for is an error, not a silently wrong code."""
    unseen = sorted(found - known)
    if unseen:
        others = f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""
        raise DataError(
            f"{split} label '{unseen[0]}'{others} in '{source}' never occurs in the training "
            f"data (classes: {', '.join(sorted(known)[:20])})"
        )
