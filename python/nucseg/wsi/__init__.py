"""Whole-slide segmentation: slide tiles in, OME-Zarr nucleus labels out.

The entry point is :func:`segment_slide` (the ``nucseg-wsi`` command). Submodules:
``reader`` (OpenSlide / tifffile), ``tiling`` (halo, ownership, label ids), ``store``
(OME-Zarr, resume records), ``pipeline`` (threads and queues), ``tissue``, ``table``,
``qc``, ``demo`` (a synthetic slide) and ``predictors`` (what a model must provide).
Importing this package is cheap: heavy libraries load when a function needs them.
"""

from __future__ import annotations

from .options import RunOptions
from .pipeline import SlideSummary, segment_slide
from .predictors import HematoxylinPredictor
from .reader import SlideError, open_slide
from .store import StoreError
from .tiling import ObjectTooLargeError

__all__ = [
    "HematoxylinPredictor",
    "ObjectTooLargeError",
    "RunOptions",
    "SlideError",
    "SlideSummary",
    "StoreError",
    "open_slide",
    "segment_slide",
]
