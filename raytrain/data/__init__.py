"""Examples for training: built-in sets and files (CSV, Parquet, TFRecord, NPZ; local or gs://),
read whole on the driver (``dataset.py``) or streamed with Ray Data (``streaming.py``)."""

from raytrain.data.dataset import DataInfo, Dataset, load_dataset

__all__ = ["DataInfo", "Dataset", "load_dataset"]
