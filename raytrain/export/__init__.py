"""Edge export: a registered model as a SavedModel and TFLite files, each quantization mode
measured against the original (``edge.py``), and the report of what each cost (``report.py``)."""

from raytrain.export.edge import export_after_training, export_model
from raytrain.export.report import ExportReport, ModeResult

__all__ = ["ExportReport", "ModeResult", "export_after_training", "export_model"]
