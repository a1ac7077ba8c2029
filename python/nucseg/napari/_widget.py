"""The *Segment nuclei* widget: a bundled network on an image layer, in a worker thread.

The widget's ``mpp`` is the pixel size of the chosen image in micrometres: the network
sees the image resampled to its training resolution (:func:`nucseg.segment`), and the
new labels layer is placed with ``scale = (mpp, mpp)`` over the image (whose scale is
set to the same when it differs, so the two overlay and measure in micrometres). The
labels layer's ``features`` hold :func:`nucseg.morphometrics.measure_nuclei`'s columns,
one row per nucleus.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, create_widget

if TYPE_CHECKING:
    import napari

#: Larger images are refused: the widget holds the image, the map and the labels in
#: memory; whole slides go through ``nucseg-wsi`` and open with the reader.
MAX_PIXELS = 64_000_000


@dataclasses.dataclass(frozen=True)
class SegmentParams:
    """What the widget passes to :func:`run_segmentation`.

    Attributes
    ----------
    mpp : float
        Pixel size of the image in micrometres.
    lam, threshold : float
        Watershed dynamics and foreground threshold (:func:`nucseg.watershed_dynamics`).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    model : str
        A bundled model's name (:data:`nucseg.inference.BUNDLED_MODELS`).
    """

    mpp: float
    lam: float
    threshold: float
    device: str
    model: str = "default"


def bundled_models() -> list[str]:
    """Names of the models shipped with nucseg, the default first."""
    from nucseg.inference import BUNDLED_MODELS

    return list(BUNDLED_MODELS)


def model_defaults(model: str = "default") -> dict[str, float]:
    """``mpp``, ``lam`` and ``threshold`` of a bundled model, from its JSON alone
    (no weights loaded)."""
    from nucseg.inference import BUNDLED_MODELS, ModelConfig

    doc = json.loads(BUNDLED_MODELS[model].with_suffix(".json").read_text())
    cfg = ModelConfig.from_dict(doc["config"])
    return {"mpp": cfg.mpp, "lam": cfg.lam, "threshold": cfg.threshold}


def available_devices() -> list[str]:
    """Devices the model can run on here, the default first (CUDA when present, as
    :func:`nucseg.load_model` picks)."""
    import torch

    if not torch.cuda.is_available():
        return ["cpu"]
    n = torch.cuda.device_count()
    return ["cuda"] + [f"cuda:{i}" for i in range(1, n)] + ["cpu"]


def layer_rgb(data: Any, *, rgb: bool, multiscale: bool, name: str = "image") -> np.ndarray:
    """An image layer's data as ``uint8`` ``(H, W, 3)``, ready for :func:`nucseg.segment`.

    Parameters
    ----------
    data : array-like or list of array-like
        ``layer.data``; of a multiscale layer, level 0 is used.
    rgb, multiscale : bool
        The layer's flags.
    name : str
        The layer's name, for error messages.

    Raises
    ------
    ValueError
        Not a 2-D RGB(A) image, too large, or values outside 0..255 (floats: 0..1).
    """
    if multiscale:
        data = data[0]
    shape = tuple(data.shape)
    if not rgb or len(shape) != 3 or shape[-1] not in (3, 4):
        raise ValueError(f"layer {name!r} must be a 2-D RGB image (H, W, 3), got shape {shape} (rgb={rgb})")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise ValueError(
            f"layer {name!r} has {shape[0]} x {shape[1]} pixels, more than {MAX_PIXELS:,}; "
            "segment whole slides with nucseg-wsi and open the store in napari"
        )
    arr = np.asarray(data[..., :3])  # drops alpha; reads a lazy (dask) layer
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
    if arr.dtype.kind in "iuf" and lo >= 0 and hi <= 255:
        return np.rint(arr).astype(np.uint8)
    raise ValueError(
        f"layer {name!r} must hold 0..255 values (or floats in 0..1), got {arr.dtype} in [{lo:g}, {hi:g}]"
    )


def scale_mpp(scale: Any, default: float) -> float:
    """The pixel size a layer's ``scale`` implies: its (y, x) value when both are equal
    and not 1 (napari's uncalibrated default), else ``default``.

    Examples
    --------
    >>> scale_mpp((0.5, 0.5), 0.25), scale_mpp((1.0, 1.0), 0.25)
    (0.5, 0.25)
    """
    y, x = (float(v) for v in tuple(scale)[-2:])
    return y if math.isclose(y, x) and not math.isclose(y, 1.0) else float(default)


@functools.lru_cache(maxsize=4)
def _model(model: str, device: str) -> Any:
    """A bundled model on ``device``, loaded once per model and device (checksum verified)."""
    from nucseg.inference import load_model

    return load_model(model, device=device)


def run_segmentation(rgb: np.ndarray, params: SegmentParams) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and features of ``rgb``: what the widget's worker thread computes.

    Returns
    -------
    labels : ndarray of int32, shape (H, W)
        As :func:`nucseg.segment` returns them with the same parameters.
    features : dict of str to ndarray
        ``index`` (the label, napari's key), then the columns of
        :func:`nucseg.morphometrics.measure_nuclei`, with ``mean_prob`` from the network's
        map (resampled to the image when ``mpp`` differs from the model's resolution).
    """
    from nucseg.batch import segment_and_measure

    labels, meas = segment_and_measure(
        rgb, _model(params.model, params.device), mpp=params.mpp, lam=params.lam, threshold=params.threshold
    )
    return labels, {"index": meas["label"].copy(), **meas}


class SegmentWidget(Container):
    """Dock widget: pick an RGB image layer, set the parameters, press *Segment nuclei*.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari; the labels layer is added to it.

    Attributes
    ----------
    worker : napari.qt.threading.FunctionWorker or None
        The running (or last) segmentation, for callers that wait on it.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        import napari.layers

        d = model_defaults()
        self._viewer = viewer
        self._image = create_widget(annotation=napari.layers.Image, label="image")
        # multiorgan, default+multiorgan: other organs than breast, non-commercial terms (docs/MODEL_CARD.md).
        self._model = ComboBox(choices=bundled_models(), value="default", label="model")
        # The step sets the decimals shown and kept: slides give mpp to 3-4 digits (0.2527).
        self._mpp = FloatSpinBox(value=d["mpp"], min=0.01, max=20.0, step=0.001, label="mpp (um/px)")
        self._lam = FloatSpinBox(value=d["lam"], min=0.0, max=1.0, step=0.01, label="lam")
        self._threshold = FloatSpinBox(value=d["threshold"], min=0.0, max=1.0, step=0.05, label="threshold")
        self._device = ComboBox(choices=available_devices(), label="device")
        self._run = PushButton(text="Segment nuclei")
        self._status = Label(value="")
        super().__init__(
            widgets=[
                self._image, self._model, self._mpp, self._lam, self._threshold, self._device, self._run, self._status
            ]
        )
        self.worker: Any = None
        self._image.changed.connect(self._on_image)
        self._model.changed.connect(self._on_model)
        self._run.changed.connect(self.run)
        self.reset_choices()
        self._on_image(self._image.value)

    def _on_image(self, layer: Any) -> None:
        # A calibrated image (scale in um, e.g. from the reader) supplies its own mpp.
        if layer is not None:
            self._mpp.value = scale_mpp(layer.scale, self._mpp.value)

    def _on_model(self, model: str) -> None:
        # Each model has its own tuned recipe: show it (the image's mpp stays).
        d = model_defaults(model)
        self._lam.value, self._threshold.value = d["lam"], d["threshold"]

    def params(self) -> SegmentParams:
        """The parameters as set in the widget."""
        return SegmentParams(
            mpp=float(self._mpp.value),
            lam=float(self._lam.value),
            threshold=float(self._threshold.value),
            device=str(self._device.value),
            model=str(self._model.value),
        )

    def run(self, *_: Any) -> Any:
        """Segment the chosen layer in a worker thread; returns the started worker (None
        when there is nothing to do, with the reason in the status line)."""
        from napari.qt.threading import create_worker

        layer = self._image.value
        if layer is None:
            self._status.value = "choose an RGB image layer"
            return None
        try:
            rgb = layer_rgb(layer.data, rgb=layer.rgb, multiscale=layer.multiscale, name=layer.name)
        except ValueError as exc:
            self._status.value = str(exc)
            return None
        params = self.params()
        worker = create_worker(run_segmentation, rgb, params, _start_thread=False)
        worker.returned.connect(functools.partial(self._add_labels, layer, params))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._run.enabled = False
        self._status.value = f"segmenting {layer.name!r} ({rgb.shape[0]} x {rgb.shape[1]} px)..."
        self.worker = worker
        worker.start()
        return worker

    def _add_labels(self, image: Any, params: SegmentParams, out: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
        labels, features = out
        scale = (params.mpp, params.mpp)
        # The labels sit on the image's pixel grid: give the image the same pixel size.
        if not np.allclose(image.scale[-2:], scale):
            image.scale = (*image.scale[:-2], *scale)
        self._viewer.add_labels(
            labels,
            name=f"{image.name} nuclei",
            scale=scale,
            translate=tuple(image.translate[-2:]),
            units="um",
            features=features,
            metadata={"nucseg_params": dataclasses.asdict(params)},
        )
        self._status.value = f"{len(features['label'])} nuclei in {image.name!r}"

    def _on_error(self, exc: BaseException) -> None:
        self._status.value = f"failed: {exc}"

    def _on_finished(self) -> None:
        self._run.enabled = True
