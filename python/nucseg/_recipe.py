"""The post-processing recipe: probability map -> nucleus labels, in one place.

Every consumer goes through :class:`PostprocessRecipe`: :func:`nucseg.segment` and
:meth:`nucseg.inference.NucleusModel.postprocess` (via ``ModelConfig.recipe``),
watershed tuning (:func:`nucseg.evaluate.tune_postprocess`, hence training), the
evaluation CLI and the slide runner, which records the recipe in its store.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .postprocess import _check_real  # one rule for real-number arguments

__all__ = ["PostprocessRecipe", "recipe_of", "remove_small"]


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects with fewer than ``min_area`` pixels and renumber the rest ``1..N`` in order.

    Parameters
    ----------
    labels : numpy.ndarray
        ``int32`` labels with consecutive ids (as :func:`nucseg.watershed_dynamics` returns).
    min_area : int
        Minimum object size in pixels; 0 or 1 keeps everything.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels.
    """
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if min_area <= 1 or labels.max() == 0:
        return labels
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    new_ids = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    return new_ids[labels]


@dataclass(frozen=True)
class PostprocessRecipe:
    """How a probability map becomes nucleus labels: the watershed, then the size filter.

    Attributes
    ----------
    lam : float
        Minimum dynamics of a marker (:func:`nucseg.watershed_dynamics`); a maximum
        whose dynamics equals ``lam`` is *not* a marker (strict ``> lam``). ``inf``
        keeps one nucleus per foreground component.
    threshold : float
        Foreground is ``prob > threshold`` in exact arithmetic: a pixel equal to the
        threshold is background (:func:`nucseg.postprocess.foreground`).
    min_area : int
        Objects with fewer pixels are dropped after the watershed; an object of exactly
        ``min_area`` pixels is kept. 0 and 1 keep everything. Counted at the map's
        resolution (the model's ``mpp``).
    connectivity : {1, 2}
        Neighbourhood of the watershed (and of foreground components).
    watershed_line : bool
        One-pixel lines between touching nuclei.

    Notes
    -----
    The filter runs on each object's final shape: removing an object leaves its pixels
    (and any line pixels around it) as background; it never changes another object.
    So, in tiles, an object can be filtered by the tile that owns it once its shape is
    known to be exact (:mod:`nucseg.wsi.tiling`).
    """

    lam: float
    threshold: float
    min_area: int = 0
    connectivity: int = 1
    watershed_line: bool = True

    def __post_init__(self) -> None:
        lam, threshold = _check_real("lam", self.lam), _check_real("threshold", self.threshold)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam!r}")
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, numbers.Integral) or self.min_area < 0:
            raise ValueError(f"min_area must be an integer >= 0, got {self.min_area!r}")
        if isinstance(self.connectivity, bool) or self.connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 (4-neighbourhood) or 2 (8-neighbourhood), got {self.connectivity!r}")
        if not isinstance(self.watershed_line, (bool, np.bool_)):
            raise ValueError(f"watershed_line must be a bool, got {self.watershed_line!r}")
        # Plain Python numbers: the recipe is compared, hashed and stored as JSON.
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "min_area", int(self.min_area))
        object.__setattr__(self, "connectivity", int(self.connectivity))
        object.__setattr__(self, "watershed_line", bool(self.watershed_line))

    @classmethod
    def of_fields(cls, config: Any) -> PostprocessRecipe:
        """The recipe of an object with flat fields: ``lam``, ``threshold`` and, optionally,
        ``min_area`` (default 0) and ``connectivity`` (default 1); the one place that reads them."""
        return cls(
            lam=config.lam, threshold=config.threshold, min_area=getattr(config, "min_area", 0),
            connectivity=getattr(config, "connectivity", 1),
        )

    def replace(self, **changes: Any) -> PostprocessRecipe:
        """A copy with some fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def watershed(self, prob: npt.NDArray[np.generic]) -> npt.NDArray[np.int32]:
        """The watershed alone (no size filter): what a tile computes before ownership."""
        from .postprocess import watershed_dynamics

        return watershed_dynamics(
            prob, self.lam, threshold=self.threshold, connectivity=self.connectivity, watershed_line=self.watershed_line
        )

    def foreground(self, prob: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
        """The pixels the watershed counts as foreground (:func:`nucseg.postprocess.foreground`)."""
        from .postprocess import foreground

        return foreground(prob, self.threshold)

    def keeps(self, area: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether objects of these pixel counts survive the size filter (``area >= min_area``)."""
        return np.asarray(area) >= self.min_area

    def remove_small(self, labels: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """The size filter on consecutive labels (renumbered ``1..N`` in raster order)."""
        return remove_small(labels, self.min_area)

    def labels(self, prob: npt.NDArray[np.generic]) -> npt.NDArray[np.int32]:
        """Nucleus labels of a whole map: the watershed, then the size filter.

        Parameters
        ----------
        prob : ndarray, shape (H, W)
            A probability map in any dtype :func:`nucseg.watershed_dynamics` takes.

        Returns
        -------
        ndarray of int32
            0 for background and lines, objects ``1..N`` in raster order of their first pixel.
        """
        return self.remove_small(self.watershed(prob))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the slide store records them; a resume must match them)."""
        return dataclasses.asdict(self)


def recipe_of(config: Any) -> PostprocessRecipe:
    """The recipe of a model configuration.

    ``config.recipe`` when it has one (:class:`nucseg.inference.ModelConfig`,
    :class:`nucseg.wsi.predictors.ClassicalConfig`), else one built from its ``lam``,
    ``threshold`` and optional ``min_area`` and ``connectivity`` (third-party predictors).
    """
    recipe = getattr(config, "recipe", None)
    if isinstance(recipe, PostprocessRecipe):
        return recipe
    return PostprocessRecipe.of_fields(config)

