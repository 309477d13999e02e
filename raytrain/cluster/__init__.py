"""Ray clusters: connecting (``connection.py``), what they hold and whether a request fits
(``resources.py``), remote jobs through the Jobs API (``jobs.py``), and the Ray 2.60
placement-group workarounds in one place (``placement.py``)."""

from raytrain.cluster.connection import ClusterInfo, connect
from raytrain.cluster.resources import check_feasible, check_locality

__all__ = ["ClusterInfo", "check_feasible", "check_locality", "connect"]
