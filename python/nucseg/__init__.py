"""nucseg: nucleus segmentation in H&E histopathology.

The post-processing core (:func:`watershed_dynamics`) is a compiled C++ kernel;
the networks (:func:`segment`, :func:`load_model`, :func:`segment_files` for
folders of images) need PyTorch, which is imported only when they are first used,
so ``import nucseg`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ._recipe import PostprocessRecipe
from .postprocess import watershed_dynamics

try:
    __version__ = version("nucseg")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

# name -> submodule that defines it; imported on first access (PEP 562).
_LAZY = {
    "segment": "nucseg.inference",
    "load_model": "nucseg.inference",
    "segment_files": "nucseg.batch",
}

__all__ = ["PostprocessRecipe", "__version__", "load_model", "segment", "segment_files", "watershed_dynamics"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nucseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
