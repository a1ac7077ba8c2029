"""Load a trained network and segment nuclei in RGB images of any size.

A model is two files side by side: ``NAME.safetensors`` (weights, read only
with safetensors, never unpickled) and ``NAME.json`` (its :class:`ModelConfig`
plus the weights' SHA-256). ``load_model()`` with no path loads the default
model bundled with the package and verifies its checksum; ``load_model("multiorgan")`` (or another name of
:data:`BUNDLED_MODELS`) one of the other bundled models (docs/MODEL_CARD.md).

Examples
--------
>>> import numpy as np, nucseg
>>> rgb = np.zeros((300, 400, 3), np.uint8)
>>> labels = nucseg.segment(rgb)                 # doctest: +SKIP
>>> model = nucseg.load_model(device="cpu")      # doctest: +SKIP
>>> prob = model.predict(rgb)                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._cpu import limit_torch_threads
from ._recipe import PostprocessRecipe

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "ModelConfig",
    "NucleusModel",
    "PRECISIONS",
    "check_precision",
    "combine_outputs",
    "load_model",
    "receptive_halo",
    "save_model",
    "segment",
]

_WEIGHTS = Path(__file__).resolve().parent / "models" / "weights"

#: The models shipped inside the package, by name (docs/MODEL_CARD.md):
#: ``"default"``, trained on TNBC (breast; CC BY 4.0 data), and ``"multiorgan"``, trained
#: on TNBC and the MoNuSeg 2018 training images (7 organs): more accurate than the default
#: on MoNuSeg's organs and on brain tissue, less on breast, dense colorectal lymphocytes and
#: DSB 2018's images, and under CC BY-NC-SA 4.0 (non-commercial) like MoNuSeg; and
#: ``"default+multiorgan"``, the two as one ensemble (the mean of their outputs, twice the
#: network time): the most accurate of the three on the held-out organs taken together, near
#: the default on breast, under the multiorgan model's terms.
BUNDLED_MODELS: dict[str, Path] = {
    name: _WEIGHTS / f"{name}.safetensors" for name in ("default", "multiorgan", "default+multiorgan")
}
DEFAULT_MODEL = BUNDLED_MODELS["default"]

# ImageNet statistics: the VGG encoders expect them, and they suit H&E as well as any.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild and use a trained network; stored as JSON.

    Attributes
    ----------
    name : str
        Human-readable model name.
    arch : str
        Architecture name understood by :func:`nucseg.models.build_model`.
    in_channels, out_channels : int
        3 (RGB) and 1 (nucleus logit) or 2 (nucleus logit + normalised-distance logit).
    stride : int
        Input height and width must be multiples of it; :meth:`NucleusModel.predict`
        pads internally.
    mean, std : tuple of float
        Normalisation of ``RGB / 255``.
    mpp : float
        Training resolution in micrometres per pixel (about 0.25 for TNBC at 40x).
    lam, threshold : float
        Recommended :func:`nucseg.watershed_dynamics` parameters for the map
        returned by :meth:`NucleusModel.predict`.
    halo : int
        Context in pixels a tile needs on each side for results identical to
        one-piece inference (receptive-field radius, rounded up to the stride).
    arch_kwargs : dict
        Constructor keyword arguments.
    min_area : int
        Objects smaller than this many pixels (at ``mpp``) are dropped after
        the watershed (0 keeps everything); tuned with ``lam`` and ``threshold``.
    connectivity : {1, 2}
        Watershed connectivity of the recipe (1: 4-neighbourhood, the default of every
        model so far; a model JSON without the field reads as 1).
    """

    name: str
    arch: str
    in_channels: int
    out_channels: int
    stride: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float = 0.25
    lam: float = 0.05
    threshold: float = 0.5
    halo: int = 32
    arch_kwargs: dict = field(default_factory=dict)
    min_area: int = 0
    connectivity: int = 1

    @property
    def recipe(self) -> PostprocessRecipe:
        """The post-processing these fields describe (``lam``, ``threshold``, ``min_area``, ``connectivity``).

        The one object :func:`segment`, :meth:`NucleusModel.postprocess`, the evaluation
        and the slide runner apply; stored as the flat fields above, so model JSON files
        keep their format.
        """
        return PostprocessRecipe.of_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; expected a subset of {sorted(names)}")
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


def combine_outputs(logits: torch.Tensor) -> torch.Tensor:
    """Turn network logits ``(B, C, H, W)`` into the map fed to the watershed.

    One channel: the nucleus probability. Two channels (nucleus, normalised
    distance): ``p * (0.5 + 0.5 * d)``. Inside a nucleus the map rises from
    about ``0.5 p`` at its rim to ``p`` at its centre, so touching nuclei form
    separate peaks whose dynamics the watershed's ``lam`` thresholds, while
    ``map > 0.25`` is still close to ``p > 0.5``.
    """
    p = torch.sigmoid(logits[:, 0].float())
    if logits.shape[1] == 1:
        return p
    d = torch.sigmoid(logits[:, 1].float())
    return p * (0.5 + 0.5 * d)


class NucleusModel:
    """A trained network with its configuration, ready for inference.

    Attributes
    ----------
    config : ModelConfig
    net : torch.nn.Module
        In eval mode, on ``device``.
    sha256 : str
        Checksum of the weights file.
    device : torch.device
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the network: ``"auto"`` is float16 autocast on CUDA and
        float32 on the CPU; ``"bfloat16"`` autocasts on either (on CPUs with AMX
        or AVX512-BF16 it is about 2.5x faster than float32; elsewhere slower), or
        compiles the network in bfloat16 with the OpenVINO backend.
    backend : {"torch", "onnx", "openvino"}
        What runs the network (resolved from the ``backend`` argument, see
        :func:`nucseg.backends.resolve_backend`): ``"onnx"`` is ONNX Runtime on the
        CPU, float32; ``"openvino"`` is OpenVINO on the CPU, float32, or bfloat16 with
        ``precision="bfloat16"``; both with ``threads`` threads (default
        ``torch.get_num_threads()``).
    """

    def __init__(
        self,
        config: ModelConfig,
        net: nn.Module,
        sha256: str,
        device: torch.device,
        precision: str = "auto",
        *,
        backend: str = "torch",
        threads: int | None = None,
    ) -> None:
        from .backends import resolve_backend

        self.config = config
        self.device = device
        self.sha256 = sha256
        self.precision = check_precision(precision)
        # Channels-last on every device: cuDNN and oneDNN both run these convolutions
        # fastest in NHWC (measured on the CPU: `predict` 1.8x faster for the default model at 1024 px).
        self.net = net.to(device).eval().to(memory_format=torch.channels_last)
        self.backend = resolve_backend(backend, self.device.type, self.precision)
        # The engine that maps a padded uint8 batch to its map: None for torch itself.
        self._engine: Any = None
        if self.backend == "onnx":
            from .backends import OnnxNetwork

            self._engine = OnnxNetwork(self.net, config, sha256, threads=threads or torch.get_num_threads())
        elif self.backend == "openvino":
            from .backends import OpenVinoNetwork

            self._engine = OpenVinoNetwork(
                self.net, config, sha256, threads=threads or torch.get_num_threads(),
                precision="bfloat16" if self.precision == "bfloat16" else "float32",
            )

    def __repr__(self) -> str:
        return (
            f"NucleusModel(name={self.config.name!r}, arch={self.config.arch!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r}, backend={self.backend!r})"
        )

    def predict(self, rgb: np.ndarray, *, batch_size: int = 4, tta: bool = False) -> np.ndarray:
        """Nucleus map in ``[0, 1]`` for one image or a batch.

        Parameters
        ----------
        rgb : numpy.ndarray
            ``uint8`` ``(H, W, 3)`` or ``(B, H, W, 3)``; any ``H, W`` (reflect-padded
            internally to a multiple of ``config.stride``; the border therefore
            sees mirrored context).
        batch_size : int
            Images per forward pass.
        tta : bool
            Test-time augmentation: average the maps of the 8 rotations and flips of
            the input (each mapped back), at 8 times the cost. The result is then
            exactly equivariant to those transforms.

        Returns
        -------
        numpy.ndarray
            ``float32`` ``(H, W)`` or ``(B, H, W)``, ready for :meth:`postprocess`.
        """
        arr = _check_rgb(rgb, "rgb", allow_batch=True)
        single = arr.ndim == 3
        batch = arr[None] if single else arr
        # One loop for every engine: padding, batching and TTA here; the engine (torch, or
        # ONNX Runtime or OpenVINO through nucseg.backends) only maps a padded uint8 batch to its map.
        run = self._engine.run if self._engine is not None else self._run_torch
        b, h, w, _ = batch.shape
        s = self.config.stride
        out = np.empty((b, h, w), np.float32)
        for i in range(0, b, batch_size):
            x = pad_to_multiple(batch[i : i + batch_size], s)
            out[i : i + batch_size] = (dihedral_mean(run, x) if tta else run(x))[:, :h, :w]
        return out[0] if single else out

    def _run_torch(self, x: np.ndarray) -> np.ndarray:
        """Combined map of a ``uint8 (B, H, W, 3)`` batch whose H and W are multiples of the stride."""
        mean = torch.tensor(self.config.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode(), self._autocast():
            t = torch.tensor(x, device=self.device)  # a copy: inputs may be read-only or strided views
            t = (t.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std
            m = combine_outputs(self.net(t.contiguous(memory_format=torch.channels_last)))
            return m.float().cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "auto" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def postprocess(
        self, prob_map: np.ndarray, lam: float | None = None, threshold: float | None = None, *, min_area: int | None = None
    ) -> np.ndarray:
        """Instance labels from a :meth:`predict` map with the dynamics watershed.

        Parameters
        ----------
        prob_map : numpy.ndarray
            2-D ``float32`` map in ``[0, 1]``.
        lam, threshold : float, optional
            Default to ``config.lam`` and ``config.threshold``.
        min_area : int, optional
            Drop smaller objects; defaults to ``config.min_area``.

        Returns
        -------
        numpy.ndarray
            ``int32`` labels, 0 = background and watershed lines, objects
            numbered ``1..N`` in raster order.

        Notes
        -----
        ``config.recipe`` with the given overrides (:class:`nucseg.PostprocessRecipe`),
        applied with its ``labels`` method: the same steps as the slide runner.
        """
        prob_map = np.asarray(prob_map)
        if prob_map.ndim != 2:
            raise ValueError(f"prob_map must be 2-D (H, W), got shape {prob_map.shape}")
        recipe = self.config.recipe.replace(lam=lam, threshold=threshold, min_area=min_area)
        return recipe.labels(prob_map.astype(np.float32, copy=False))


def _check_rgb(rgb: np.ndarray, name: str, *, allow_batch: bool = False) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(rgb).__name__}")
    ok_ndim = (3, 4) if allow_batch else (3,)
    if rgb.ndim not in ok_ndim or rgb.shape[-1] != 3:
        want = "(H, W, 3) or (B, H, W, 3)" if allow_batch else "(H, W, 3)"
        raise ValueError(f"{name} must have shape {want} (RGB), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 RGB, got dtype {rgb.dtype}")
    if min(rgb.shape[-3:-1]) < 1:
        raise ValueError(f"{name} is empty: shape {rgb.shape}")
    return rgb


def pad_to_multiple(batch: np.ndarray, stride: int) -> np.ndarray:
    """``(B, H, W, C)`` padded at the bottom and right to multiples of ``stride``:
    mirrored (without repeating the edge), or the edge repeated where the image is too
    small to mirror."""
    _, h, w, _ = batch.shape
    ph, pw = (-h) % stride, (-w) % stride
    if not (ph or pw):
        return batch
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(batch, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def dihedral_mean(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Mean of ``run`` over the 8 rotations and flips of ``x`` ``(B, H, W, C)``, each map
    mapped back (test-time augmentation); cropped to ``x``'s unpadded size by the caller."""
    total = None
    for flip in (False, True):
        for k in range(4):
            v = np.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2))
            m = np.rot90(run(np.ascontiguousarray(v)), -k, axes=(1, 2))
            m = m[:, :, ::-1] if flip else m
            total = m.copy() if total is None else total + m
    return total / np.float32(8)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    return dev


def _model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    if isinstance(path, str) and path in BUNDLED_MODELS:
        # A model file always has a suffix, so a bare name cannot be a file of that name.
        path = BUNDLED_MODELS[path]
    p = Path(path)
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    if p.suffix != ".safetensors":
        raise ValueError(
            f"model must be a bundled model name ({', '.join(map(repr, BUNDLED_MODELS))}) "
            f"or a path ending in .safetensors or .json, got {os.fspath(path)!r}"
        )
    return p, p.with_suffix(".json")


def is_bundled(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` (None, a bundled name or a path) names a model shipped with nucseg."""
    if path is None:
        return True
    try:
        weights, _ = _model_paths(path)
    except ValueError:
        return False
    return weights.resolve() in {p.resolve() for p in BUNDLED_MODELS.values()}


def save_model(net: nn.Module, config: ModelConfig, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` config with the weights' SHA-256.

    Parameters
    ----------
    net : torch.nn.Module
        Network whose ``state_dict`` matches ``config``.
    config : ModelConfig
    path : str or os.PathLike
        Target ``.safetensors`` file; parent folders are created.
    **extra
        Additional JSON-serialisable metadata stored under ``"training"``.

    Returns
    -------
    pathlib.Path
        The weights file.
    """
    from safetensors.torch import save_file

    weights, meta = _model_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(weights))
    doc = {"config": config.to_dict(), "sha256": _sha256(weights)}
    if extra:
        doc["training"] = extra
    meta.write_text(json.dumps(doc, indent=2) + "\n")
    return weights


#: Values of ``precision`` (:func:`load_model`, :func:`segment`, ``nucseg-wsi --precision``).
PRECISIONS = ("auto", "float32", "bfloat16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def load_model(
    path: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    precision: str = "auto",
    backend: str = "torch",
    threads: int | None = None,
) -> NucleusModel:
    """Load a trained model (weights via safetensors only; no pickle).

    Parameters
    ----------
    path : str or os.PathLike, optional
        ``.safetensors`` file (its ``.json`` beside it) or the ``.json``, or the
        name of a bundled model (:data:`BUNDLED_MODELS`: ``"default"``,
        ``"multiorgan"``, ``"default+multiorgan"``). None loads ``"default"``.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; CUDA when available if None.
    precision : {"auto", "float32", "bfloat16"}
        See :class:`NucleusModel`. ``"bfloat16"`` changes the map by about 0.02 at
        most (object F1 >= 0.996 against float32 on TNBC tiles).
    backend : {"torch", "auto", "onnx", "openvino"}
        ``"onnx"`` runs the network with ONNX Runtime on the CPU, ``"openvino"`` with
        OpenVINO (exported once per model and cached, see :mod:`nucseg.backends`);
        ``"auto"`` on the CPU picks ONNX Runtime when installed and the precision is
        float32, else OpenVINO when installed, else torch.
    threads : int, optional
        ONNX Runtime or OpenVINO threads; ``torch.get_num_threads()`` when None. The
        torch backend uses torch's own setting. On the CPU, torch's setting is first
        lowered to the CPUs the process may use if it is higher
        (:func:`nucseg._cpu.limit_torch_threads`: torch counts the affinity mask but not
        a container's CPU quota, and would run one thread per host core).

    Returns
    -------
    NucleusModel

    Raises
    ------
    FileNotFoundError
        If the weights or their JSON are missing.
    ValueError
        If ``path`` is neither a bundled name nor a ``.safetensors``/``.json`` path,
        the checksum does not match (corrupted or tampered file), the JSON is
        malformed, the weights do not fit the architecture, or ``backend="onnx"``
        is asked with CUDA or bfloat16 (``"openvino"`` with CUDA).
    ImportError
        ``backend="onnx"`` without onnxruntime (install ``nucseg[onnx]``), or
        ``"openvino"`` without OpenVINO (``nucseg[openvino]``).
    """
    from safetensors.torch import load_file

    from .backends import check_backend
    from .models import build_model

    check_precision(precision)
    check_backend(backend)
    weights, meta = _model_paths(DEFAULT_MODEL if path is None else path)
    bundled = is_bundled(path)
    for p in (weights, meta):
        if not p.is_file():
            raise FileNotFoundError(f"model file not found: {p}")
    try:
        doc = json.loads(meta.read_text())
        config = ModelConfig.from_dict(doc["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed model config {meta}: {exc}") from None
    digest = _sha256(weights)
    expected = doc.get("sha256")
    if expected is None and bundled:
        raise ValueError(f"bundled model config {meta} lacks its sha256")
    if expected is not None and digest != expected:
        raise ValueError(
            f"checksum mismatch for {weights}: expected sha256 {expected}, got {digest}; "
            "the file is corrupted or was modified"
        )
    net = build_model(config.arch, config.in_channels, config.out_channels, **config.arch_kwargs)
    state = load_file(str(weights))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights {weights} do not fit architecture {config.arch!r}: {exc}") from None
    dev = _resolve_device(device)
    if dev.type == "cpu":
        limit_torch_threads()
    return NucleusModel(config, net, digest, dev, precision, backend=backend, threads=threads)


def _probe_radius(net: nn.Module, size: int, gen: torch.Generator) -> int:
    radius, c = 0, size // 2
    param = next(net.parameters())
    for _ in range(3):
        x = torch.randn(1, 3, size, size, generator=gen).to(param.device).requires_grad_(True)
        net(x)[0, :, c, c].sum().backward()
        ys, xs = torch.nonzero(x.grad.abs().sum(dim=(0, 1)) > 0, as_tuple=True)
        if len(ys):
            radius = max(radius, int((ys - c).abs().max()), int((xs - c).abs().max()))
    return radius


def receptive_halo(
    net: nn.Module, stride: int, *, size: int | None = None, max_size: int = 2048, seed: int = 0
) -> int:
    """Measure a network's receptive-field radius and round it up to the stride.

    The gradient of the centre output pixel with respect to a random input is
    non-zero exactly on the receptive field (in eval mode, barring dead ReLUs,
    which is why a few random inputs are tried).

    Parameters
    ----------
    net : torch.nn.Module
    stride : int
        The network's stride.
    size : int, optional
        First probe size (rounded up to the stride), doubled while the field
        reaches the probe's border. Defaults to ``max(128, 4 * stride)``.
    max_size : int
        Largest probe tried.

    Returns
    -------
    int
        Halo in pixels, a multiple of ``stride``.
    """
    size = size or max(128, 4 * stride)
    size += (-size) % stride
    was_training = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    try:
        while True:
            radius = _probe_radius(net, size, gen)
            # A field that reaches the probe's border may be larger: probe again, bigger.
            if radius < size // 2 - 1 or size >= max_size:
                break
            size *= 2
    finally:
        net.train(was_training)
        net.zero_grad(set_to_none=True)
    return int(math.ceil(max(radius, 1) / stride) * stride)


def _tile_starts(n: int, core: int) -> list[int]:
    return list(range(0, n, core))


def segment(
    rgb: np.ndarray,
    model: NucleusModel | str | os.PathLike | None = None,
    *,
    lam: float | None = None,
    threshold: float | None = None,
    mpp: float | None = None,
    device: str | None = None,
    precision: str = "auto",
    tile: int = 1024,
    return_map: bool = False,
    tta: bool = False,
    backend: str = "torch",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment the nuclei of an RGB image of any size.

    The image is mirror-padded by ``model.config.halo`` and cut into tiles of
    ``tile`` pixels (plus the halo on each side); each tile's centre is written
    into one map, which is then post-processed in one piece by the dynamics
    watershed. Because the halo covers the receptive field and tiles are aligned
    on the stride, the result does not depend on ``tile``.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` ``(H, W, 3)`` image.
    model : NucleusModel, path or bundled model name, optional
        The bundled default model when None; a name of :data:`BUNDLED_MODELS`
        (``"multiorgan"``, ``"default+multiorgan"``) for another bundled model.
    lam, threshold : float, optional
        Watershed parameters; the model's recommended values when None. The rest of
        the model's post-processing (``config.recipe``: ``min_area``, connectivity)
        applies as it is; :func:`nucseg.wsi.segment_slide` applies the same recipe.
    mpp : float, optional
        Resolution of ``rgb`` in um/px. When it differs from ``model.config.mpp``
        by more than 1 %, the image is resampled to the model's resolution and
        the labels back (nearest neighbour) to ``rgb``'s shape.
    device, precision, backend : str, optional
        Used when ``model`` is loaded here (:func:`load_model`).
    tile : int
        Tile core size in pixels (rounded up to the stride).
    return_map : bool
        Also return the float map fed to the watershed (at the model's resolution).
    tta : bool
        Average the network over the 8 rotations and flips of each tile (8x the
        inference cost); see :meth:`NucleusModel.predict`.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        ``int32`` labels of shape ``(H, W)``; with ``return_map`` also the map.
    """
    rgb = _check_rgb(rgb, "rgb")
    if not isinstance(model, NucleusModel):
        model = load_model(model, device=device, precision=precision, backend=backend)
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    cfg = model.config
    h0, w0 = rgb.shape[:2]
    img = rgb
    if mpp is not None:
        if not mpp > 0:
            raise ValueError(f"mpp must be a positive resolution in um/px, got {mpp}")
        factor = mpp / cfg.mpp
        if abs(factor - 1) > 0.01:
            from skimage.transform import rescale

            img = rescale(rgb, factor, order=1, channel_axis=-1, anti_aliasing=factor < 1, preserve_range=True)
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    prob = _predict_tiled(model, img, tile, tta)
    labels = model.postprocess(prob, lam=lam, threshold=threshold)
    if labels.shape != (h0, w0):
        from skimage.transform import resize

        labels = resize(labels, (h0, w0), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return (labels, prob) if return_map else labels


def _predict_tiled(model: NucleusModel, img: np.ndarray, tile: int, tta: bool = False) -> np.ndarray:
    s, halo = model.config.stride, model.config.halo
    core = int(math.ceil(tile / s) * s)
    h, w = img.shape[:2]
    if halo % s:
        raise ValueError(f"model halo {halo} is not a multiple of its stride {s}")
    # Mirror padding the whole image once makes every tile see the same context as one-piece inference.
    padded = np.pad(img, ((halo, halo + core), (halo, halo + core), (0, 0)), mode="reflect")
    out = np.empty((h, w), np.float32)
    for y in _tile_starts(h, core):
        for x in _tile_starts(w, core):
            ch, cw = min(core, h - y), min(core, w - x)
            # Read region: core plus halo both sides, rounded up to the stride.
            rh = halo + ch + halo
            rw = halo + cw + halo
            rh += (-rh) % s
            rw += (-rw) % s
            window = padded[y : y + rh, x : x + rw]
            m = model.predict(window, tta=tta)
            out[y : y + ch, x : x + cw] = m[halo : halo + ch, halo : halo + cw]
    return out
