"""What an export measured: one row per quantization mode (size, metric, latency) against the
Keras model, as JSON, a table and Markdown."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["WARMUP_RUNS", "ExportReport", "ModeResult"]

WARMUP_RUNS = 20  # untimed inferences before each latency measurement


@dataclass(frozen=True)
class ModeResult:
    mode: str
    file: str
    bytes: int
    ratio_to_float32: float
    metric: float  # on the validation split, the .tflite file running in LiteRT
    delta: float  # metric - the Keras model's, in the metric's units (a fraction for accuracy)
    latency_ms: float  # median per-example latency, batch 1
    latency_spread_ms: float  # 10th to 90th percentile of the timed runs
    input_dtype: str


@dataclass(frozen=True)
class ExportReport:
    """What each optimization cost: size, the experiment's metric and latency, per mode."""

    model: str
    version: str
    run_id: str
    folder: str
    metric_name: str
    validation_examples: int
    keras_metric: float
    keras_latency_ms: float
    saved_model_bytes: int
    settings: dict[str, Any]
    machine: str
    modes: list[ModeResult]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, str]]:
        """One display row per model, the Keras original first (for Markdown and the CLI)."""
        percent = self.metric_name == "accuracy"

        def row(
            model: str, size: int, ratio: str, value: float, delta: str, ms: float, spread: str
        ) -> dict[str, str]:
            shown = f"{value:.2%}" if percent else f"{value:.4g}"
            return {
                "model": model,
                "size": f"{size / 1024:,.1f} KiB",
                "vs float32": ratio,
                self.metric_name: shown,
                "delta": delta,
                "latency ms": f"{ms:.3f}",
                "spread ms": spread,
            }

        rows = [
            row(
                "Keras (SavedModel)",
                self.saved_model_bytes,
                "",
                self.keras_metric,
                "",
                self.keras_latency_ms,
                "",
            )
        ]
        for m in self.modes:
            delta = f"{100 * m.delta:+.2f} pt" if percent else f"{m.delta:+.4g}"
            ratio = f"{m.ratio_to_float32:.2f}"
            spread = f"{m.latency_spread_ms:.4f}"
            rows.append(
                row(f"{m.mode} ({m.file})", m.bytes, ratio, m.metric, delta, m.latency_ms, spread)
            )
        return rows

    def to_markdown(self) -> str:
        rows = self.table()
        lines = [
            f"# Edge export of {self.model} version {self.version}",
            "",
            f"{self.metric_name} on the validation split ({self.validation_examples} examples), "
            "each .tflite file running in LiteRT's interpreter; delta is against the Keras "
            f"model. Latency: batch 1, median of {self.settings['latency_runs']} runs after "
            f"{WARMUP_RUNS} warm-up runs (spread: their 10th to 90th percentile), LiteRT with "
            f"{self.settings['num_threads']} thread(s), "
            f"Keras as a tf.function with TensorFlow's own threads, on {self.machine}.",
            "",
            "| " + " | ".join(rows[0]) + " |",
            "|---|" + "---:|" * (len(rows[0]) - 1),
        ]
        lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
        return "\n".join(lines) + "\n"
