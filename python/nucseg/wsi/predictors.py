"""What the slide runner needs from a model, and a classical stand-in.

The runner accepts any object with ``predict(rgb) -> prob`` and a ``config`` holding
``name``, ``mpp``, ``lam``, ``threshold``, ``halo`` (context pixels per side) and
optionally ``stride``, ``min_area`` and ``connectivity`` (or a ``recipe``:
:class:`nucseg.PostprocessRecipe`), plus a ``sha256`` checksum: the networks returned by
:func:`nucseg.inference.load_model`, or :class:`HematoxylinPredictor`, a deterministic,
exactly translation-invariant colour-deconvolution baseline that needs no weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from nucseg._recipe import PostprocessRecipe, recipe_of


class PredictorConfig(Protocol):
    """The fields of a model configuration the runner reads."""

    name: str
    mpp: float
    lam: float
    threshold: float
    halo: int


class Predictor(Protocol):
    """A model the runner can use."""

    config: Any
    sha256: str

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Map RGB uint8 ``(B, H, W, 3)`` to float32 probabilities ``(B, H, W)`` in [0, 1]."""
        ...


@dataclass(frozen=True)
class ClassicalConfig:
    """Configuration of :class:`HematoxylinPredictor`.

    Attributes
    ----------
    name : str
    mpp : float
        Resolution the constants were tuned for (um/px).
    lam, threshold : float
        Watershed dynamics and foreground threshold on the [0, 1] map.
    sigma : float
        Gaussian smoothing of the hematoxylin channel, in pixels.
    low, high : float
        Hematoxylin optical densities mapped to 0 and 1.
    halo : int
        Context needed per side (the Gaussian's support).
    stride : int
    min_area : int
        Objects with fewer pixels are dropped after the watershed.
    connectivity : {1, 2}
        Watershed connectivity.
    """

    name: str = "hematoxylin"
    arch: str = "colour-deconvolution"
    mpp: float = 0.25
    lam: float = 0.05
    threshold: float = 0.5
    sigma: float = 1.5
    low: float = 0.015
    high: float = 0.085
    halo: int = 8
    stride: int = 1
    min_area: int = 0
    connectivity: int = 1

    @property
    def recipe(self) -> PostprocessRecipe:
        """The post-processing of this predictor's map."""
        return PostprocessRecipe.of_fields(self)


class HematoxylinPredictor:
    """Smoothed hematoxylin density as a nucleus probability (no learning, no weights).

    Pointwise colour deconvolution (:func:`skimage.color.rgb2hed`), a Gaussian of
    ``sigma`` pixels (support ``4 sigma`` <= ``halo``) and a fixed linear map to [0, 1].
    Every step is either pointwise or a fixed-size convolution, so the map of a region
    equals the map of the whole image away from the region's cut borders: this makes
    tile-size invariance of the slide runner exactly testable.

    Parameters
    ----------
    **overrides
        Fields of :class:`ClassicalConfig` to change.
    """

    def __init__(self, **overrides: Any) -> None:
        self.config = ClassicalConfig(**overrides)
        if self.config.halo < math.ceil(4 * self.config.sigma):
            raise ValueError(f"halo must be at least 4 * sigma = {4 * self.config.sigma}, got {self.config.halo}")
        blob = json.dumps(asdict(self.config), sort_keys=True).encode()
        self.sha256 = hashlib.sha256(blob).hexdigest()

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Probability maps for a batch of RGB uint8 images ``(B, H, W, 3)``."""
        from scipy import ndimage
        from skimage.color import rgb2hed

        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 of shape (B, H, W, 3), got {rgb.dtype} {rgb.shape}")
        cfg = self.config
        out = np.empty(rgb.shape[:3], np.float32)
        for i in range(rgb.shape[0]):
            hema = rgb2hed(rgb[i])[..., 0]
            hema = ndimage.gaussian_filter(hema, cfg.sigma, mode="reflect", truncate=4.0)
            out[i] = np.clip((hema - cfg.low) / (cfg.high - cfg.low), 0.0, 1.0)
        return out


def resolve_model(
    model: Any = None,
    *,
    device: str | None = None,
    precision: str = "auto",
    backend: str = "torch",
    threads: int | None = None,
) -> Any:
    """Turn ``model`` into a predictor.

    Parameters
    ----------
    model : None, str, path-like or predictor
        None: the bundled default network (:func:`nucseg.inference.load_model`).
        ``"hematoxylin"`` (or ``"classical"``): :class:`HematoxylinPredictor`.
        A bundled model's name (``"default"``, ``"multiorgan"``,
        ``"default+multiorgan"``) or a path: a
        weights file for :func:`nucseg.inference.load_model`.
        ``"package.module:factory"``: ``factory()`` is called to build the predictor.
        Anything with ``predict`` and ``config`` is returned as it is.
    device : str, optional
        Device for the network (``"cpu"``, ``"cuda"``; None picks).
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of a network loaded here (:class:`nucseg.inference.NucleusModel`);
        the hematoxylin predictor computes in float64 and ignores it.
    backend : {"torch", "auto", "onnx", "openvino"}
        What runs a network loaded here (:mod:`nucseg.backends`); the others ignore it.
    threads : int, optional
        ONNX Runtime or OpenVINO threads of a network loaded here (default: torch's thread count).
    """
    if precision != "auto":  # checked before anything loads (torch is imported only then)
        from nucseg.inference import check_precision

        check_precision(precision)
    if backend != "torch":
        from nucseg.backends import check_backend

        check_backend(backend)
    if model is not None and hasattr(model, "predict") and hasattr(model, "config"):
        return model
    if isinstance(model, str) and model.lower() in ("hematoxylin", "classical"):
        return HematoxylinPredictor()
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be None, a path, 'hematoxylin' or a predictor, got {type(model).__name__}")
    if isinstance(model, str) and ":" in model and not os.path.exists(model):
        return _from_factory(model)
    from nucseg.inference import BUNDLED_MODELS, is_bundled, load_model

    if model is not None and not os.path.isfile(model) and not is_bundled(model):
        names = ", ".join(repr(n) for n in (*BUNDLED_MODELS, "hematoxylin"))
        raise FileNotFoundError(f"model weights not found: {model} (or give a bundled model: {names}; or module:factory)")

    return load_model(
        None if model is None else os.fspath(model),
        device=None if device in (None, "auto") else device,
        precision=precision,
        backend=backend,
        threads=threads,
    )


def describe(pred: Any) -> dict[str, Any]:
    """Name, checksum and the fields the runner uses, for the run metadata.

    ``lam``, ``threshold``, ``min_area`` and ``connectivity`` are the model's
    post-processing recipe (:func:`nucseg._recipe.recipe_of`), the defaults of a run.
    """
    cfg = pred.config
    recipe = recipe_of(cfg)
    return {
        "name": str(getattr(cfg, "name", type(pred).__name__)),
        "arch": str(getattr(cfg, "arch", "")),
        "sha256": str(getattr(pred, "sha256", "")),
        "precision": str(getattr(pred, "precision", "float64")),
        "backend": str(getattr(pred, "backend", "numpy")),
        "mpp": float(cfg.mpp),
        "lam": recipe.lam,
        "threshold": recipe.threshold,
        "min_area": recipe.min_area,
        "connectivity": recipe.connectivity,
        "context": int(cfg.halo),
        "stride": int(getattr(cfg, "stride", 1) or 1),
    }


def _from_factory(spec: str) -> Any:
    """Build a predictor from ``"package.module:factory"``."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {spec!r}: cannot import the factory ({exc})") from None
    pred = factory()
    if not (hasattr(pred, "predict") and hasattr(pred, "config")):
        raise TypeError(f"model {spec!r}: the factory returned {type(pred).__name__}, not a predictor")
    return pred
