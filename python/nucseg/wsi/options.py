"""The options that shape a slide run, validated once: :class:`RunOptions`.

The CLI builds one from its flags; :func:`nucseg.wsi.segment_slide` and
:func:`nucseg.wsi.distributed.run_distributed` take it as ``options=`` (or build it from
their keyword arguments, which stay for callers that use them), and the Dask runner
sends it to its workers as it is.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

from .reader import check_reader, validate_mpp

__all__ = ["RunOptions", "check_int", "pick_options"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _optional_real(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RunOptions:
    """What shapes a slide run (the same for both runners), checked on construction.

    Attributes
    ----------
    lam, threshold, min_area : optional
        The post-processing recipe's overrides (None: the model's); see
        :class:`nucseg.PostprocessRecipe`.
    connectivity : {1, 2}, optional
        Watershed connectivity (None: the model's, ``config.recipe.connectivity``).
    mpp : float, optional
        Level-0 microns per pixel, overriding or supplying the slide's.
    level : int, optional
        Pyramid level to read (None: closest to the model's resolution).
    tile, halo, max_halo : int
        Core tile size, halo (None: model context + 96) and largest halo of a retry.
    strict : bool
        Raise at ``max_halo`` instead of keeping approximate nuclei.
    tissue : ``"auto"``, ``"none"`` or path-like
        Tissue detection mode or mask.
    resume, overwrite : bool
        Continue an existing store, or replace it (exclusive).
    save_prob, save_image : bool
        Also store the probability map, or the RGB at the processing resolution.
    batch_size : int
        Tiles per inference call.
    device, precision : str
        Where and in which arithmetic a network loaded by the run computes.
    backend : {"torch", "onnx", "openvino", "auto"}
        Inference engine of a network loaded by the run (:mod:`nucseg.backends`).
    reader : {"auto", "openslide", "tifffile"}
        Which library decodes the slide (:func:`nucseg.wsi.reader.open_slide`). Not a
        store setting: ``"auto"`` only picks tifffile where its pixels are OpenSlide's,
        so a resume may use another reader.

    See :func:`nucseg.wsi.segment_slide` for each option in full.
    """

    lam: float | None = None
    threshold: float | None = None
    min_area: int | None = None
    connectivity: int | None = None
    mpp: float | None = None
    level: int | None = None
    tile: int = 2048
    halo: int | None = None
    max_halo: int | None = None
    strict: bool = False
    tissue: str | os.PathLike[str] = "auto"
    resume: bool = False
    overwrite: bool = False
    save_prob: bool = False
    save_image: bool = False
    batch_size: int = 1
    device: str | None = None
    precision: str = "auto"
    backend: str = "torch"
    reader: str = "auto"

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite are exclusive: pick one")
        ints = {
            "tile": check_int("tile", self.tile, 16),
            "halo": None if self.halo is None else check_int("halo", self.halo, 1),
            "max_halo": None if self.max_halo is None else check_int("max_halo", self.max_halo, 1),
            "batch_size": check_int("batch_size", self.batch_size, 1),
            "level": None if self.level is None else check_int("level", self.level, 0),
            "min_area": None if self.min_area is None else check_int("min_area", self.min_area, 0),
        }
        if self.connectivity is not None and (isinstance(self.connectivity, bool) or self.connectivity not in (1, 2)):
            raise ValueError(f"connectivity must be 1 or 2 (or None: the model's), got {self.connectivity!r}")
        reals = {
            "lam": _optional_real("lam", self.lam),
            "threshold": _optional_real("threshold", self.threshold),
            "mpp": None if self.mpp is None else validate_mpp(self.mpp, "mpp"),  # the reader's plausible range
        }
        if reals["lam"] is not None and reals["lam"] < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if not isinstance(self.tissue, (str, os.PathLike)):
            raise TypeError(f"tissue must be 'auto', 'none' or a mask path, got {self.tissue!r}")
        if self.precision != "auto":  # checked here, before anything loads (torch is imported only then)
            from nucseg.inference import check_precision

            check_precision(self.precision)
        check_reader(self.reader)
        if self.backend != "torch":  # an unknown backend fails here, before any slide is read
            from nucseg.backends import check_backend

            check_backend(self.backend)
        normal = {**ints, **reals, "connectivity": None if self.connectivity is None else int(self.connectivity)}
        normal.update({k: bool(getattr(self, k)) for k in ("strict", "resume", "overwrite", "save_prob", "save_image")})
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    def with_absolute_paths(self) -> RunOptions:
        """The same options with a tissue mask path made absolute (for workers elsewhere)."""
        from dataclasses import replace

        if isinstance(self.tissue, os.PathLike) or self.tissue not in ("auto", "none"):
            return replace(self, tissue=os.path.abspath(self.tissue))
        return self


def pick_options(options: RunOptions | None, given: RunOptions) -> RunOptions:
    """``options`` when a runner got them (its option keywords must then be left unset), else ``given``.

    ``given`` is what the runner built from its keywords.
    """
    if options is None:
        return given
    if not isinstance(options, RunOptions):
        raise TypeError(f"options must be a RunOptions, got {type(options).__name__}")
    if given != RunOptions():
        raise TypeError("pass the run's options either as options=RunOptions(...) or as keywords, not both")
    return options
