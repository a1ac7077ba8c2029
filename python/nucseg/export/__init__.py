"""Results people can open: QuPath GeoJSON, an HTML report, store checks.

``write_geojson`` (the ``nucseg export`` command) and ``write_report`` (``nucseg
report``) read a finished ``nucseg-wsi`` output through :func:`open_result`, which
refuses anything else with one clear message. Importing this package is cheap.
"""

from __future__ import annotations

from .geojson import ExportSummary, iter_features, write_feature_collection, write_geojson
from .report import write_report
from .result import Result, ResultError, open_result

__all__ = [
    "ExportSummary",
    "Result",
    "ResultError",
    "iter_features",
    "open_result",
    "write_feature_collection",
    "write_geojson",
    "write_report",
]
