"""Edge export: a registered model as a SavedModel and TFLite files, each quantization mode
measured against the original (``tflite.py``), and the report of what each cost (``report.py``)."""

from raytrain.export.report import ExportReport, ModeResult
from raytrain.export.tflite import export_after_training, export_model

__all__ = ["ExportReport", "ModeResult", "export_after_training", "export_model"]
