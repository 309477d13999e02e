"""Edge export: a registered model as a SavedModel and TFLite files, each quantization mode
measured against the original (``edge.py``)."""

from raytrain.export.edge import ExportReport, ModeResult, export_after_training, export_model

__all__ = ["ExportReport", "ModeResult", "export_after_training", "export_model"]
