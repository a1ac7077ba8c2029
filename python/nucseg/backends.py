"""Inference backends: PyTorch, or the same network exported to ONNX and run by ONNX Runtime or OpenVINO.

On a CPU, ONNX Runtime runs the small U-Net of the bundled model faster than eager
PyTorch (its graph optimiser fuses batch norm and ReLU into the convolutions). The
exported graph contains everything :meth:`nucseg.inference.NucleusModel.predict`
does between the padded ``uint8`` batch and the map fed to the watershed (scaling,
normalisation, the network, :func:`nucseg.inference.combine_outputs`); padding,
batching and test-time augmentation are done once, in ``NucleusModel.predict``, for
both engines, which differ only in ``run(batch)``.

The ONNX file is exported once per model and cached in the user's cache folder
(``NUCSEG_CACHE_DIR``, else the platform's, e.g. ``~/.cache/nucseg/onnx``), keyed by
the weights' checksum, the configuration and the exporter; it is written atomically,
so a crash never leaves a truncated file behind. ONNX files are protobuf, not pickle.

OpenVINO (``backend="openvino"``) compiles the same ONNX file for the CPU: in float32 it
matches torch like ONNX Runtime does; with ``precision="bfloat16"`` it runs the network in
bfloat16 on CPUs that have it (AMX, AVX512-BF16), several times faster, within the same
object-level parity bar (tests/test_backends.py).

Install the optional dependencies with ``pip install 'nucseg[onnx]'`` or
``pip install 'nucseg[openvino]'``.

Examples
--------
>>> import nucseg
>>> model = nucseg.load_model(device="cpu", backend="onnx", threads=2)  # doctest: +SKIP
>>> prob = model.predict(rgb)                                             # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: resolve_backend needs none of it
    import torch
    from torch import nn

    from .inference import ModelConfig

__all__ = [
    "BACKENDS",
    "OnnxNetwork",
    "OpenVinoNetwork",
    "cache_dir",
    "check_backend",
    "export_onnx",
    "model_key",
    "onnx_available",
    "openvino_available",
    "require_onnxruntime",
    "require_openvino",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

#: Values of ``backend`` (:func:`nucseg.load_model`, ``nucseg-wsi --backend``).
BACKENDS = ("auto", "torch", "onnx", "openvino")

#: ONNX opset of the export; part of the cache key, as is the layout version below.
OPSET = 17
_LAYOUT = "nhwc-uint8-combined-v1"  # bump when the exported graph's contract changes
# What each exported backend needs installed (modules; the runtime first, onnx for the export)
# and the extra that brings them.
_NEEDS = {
    "onnx": (("onnxruntime", "onnx"), "pip install 'nucseg[onnx]' (onnxruntime and onnx)"),
    "openvino": (("openvino", "onnx"), "pip install 'nucseg[openvino]' (openvino and onnx)"),
}


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ValueError naming it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules[name] = None blocks it
        return False


def _available(backend: str) -> bool:
    return all(_installed(name) for name in _NEEDS[backend][0])


def _require(backend: str) -> Any:
    """Import and return ``backend``'s runtime module, or raise an ImportError naming the extra."""
    names, hint = _NEEDS[backend]
    missing = [name for name in names if not _installed(name)]
    if missing:
        raise ImportError(f"backend {backend!r} needs {' and '.join(missing)}: {hint}")
    return importlib.import_module(names[0])


def onnx_available() -> bool:
    """Whether ONNX Runtime and onnx are installed (checked without importing them)."""
    return _available("onnx")


def openvino_available() -> bool:
    """Whether OpenVINO and onnx (for the export) are installed (checked without importing them)."""
    return _available("openvino")


def require_onnxruntime() -> Any:
    """Import and return :mod:`onnxruntime`, or raise an ImportError naming the extra to install."""
    return _require("onnx")


def require_openvino() -> Any:
    """Import and return :mod:`openvino`, or raise an ImportError naming the extra to install."""
    return _require("openvino")


def resolve_backend(backend: str, device_type: str, precision: str = "auto") -> str:
    """The backend that runs: ``"torch"``, ``"onnx"`` or ``"openvino"``.

    Parameters
    ----------
    backend : {"auto", "torch", "onnx", "openvino"}
        ``"auto"`` on the CPU is ONNX Runtime when it is installed and the arithmetic is
        float32, else OpenVINO when it is installed (float32 or bfloat16), else PyTorch;
        on CUDA, PyTorch.
    device_type : str
        ``"cpu"`` or ``"cuda"``.
    precision : {"auto", "float32", "bfloat16"}
        The ONNX Runtime backend computes in float32 only; OpenVINO in float32
        (``"auto"``, ``"float32"``) or bfloat16.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        ``backend="onnx"`` or ``"openvino"`` with a CUDA device; ``"onnx"`` with bfloat16.
    ImportError
        The chosen backend is not installed (the message names the extra).
    """
    check_backend(backend)
    float32 = precision in ("auto", "float32")
    if backend == "auto":
        if device_type != "cpu":
            return "torch"
        # ONNX Runtime first in float32, although OpenVINO was 1.15x faster end to end: once
        # OpenVINO models had run in the test suite's process, that process died of SIGSEGV later
        # (3 runs of 3 when OpenVINO came in; 0 of 4 since, with OpenVINO first, so the cause is
        # not known). Until it is, OpenVINO runs where asked for, and for bfloat16, which only it
        # compiles.
        if float32 and onnx_available():
            return "onnx"
        return "openvino" if openvino_available() else "torch"
    if backend in ("onnx", "openvino") and device_type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU only, got device {device_type!r}; use backend 'torch'")
    if backend == "onnx":
        if not float32:
            raise ValueError(
                f"backend 'onnx' computes in float32, got precision {precision!r}; use backend 'openvino' or 'torch'"
            )
        require_onnxruntime()
    if backend == "openvino":
        require_openvino()
    return backend


def cache_dir() -> Path:
    """Folder of the exported ONNX files: ``$NUCSEG_CACHE_DIR/onnx``, else the user cache folder.

    The user cache folder is :func:`platformdirs.user_cache_dir` when platformdirs is
    installed, else ``$XDG_CACHE_HOME/nucseg`` or ``~/.cache/nucseg``. Never inside the
    package: it may be read-only and is shared by every user.
    """
    root = os.environ.get("NUCSEG_CACHE_DIR")
    if not root:
        try:
            from platformdirs import user_cache_dir

            root = user_cache_dir("nucseg", appauthor=False)
        except ImportError:
            root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nucseg")
    return Path(root) / "onnx"


def _state_digest(net: nn.Module) -> str:
    """SHA-256 of a network's parameters and buffers (for models built without a weights file)."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_key(config: ModelConfig, sha256: str, net: nn.Module | None = None) -> str:
    """Cache key of an exported model: weights, configuration, exporter and graph layout.

    Parameters
    ----------
    config : ModelConfig
    sha256 : str
        Checksum of the weights file; when empty, ``net``'s parameters are hashed.
    net : torch.nn.Module, optional
        Needed when ``sha256`` is empty.

    Returns
    -------
    str
        24 hexadecimal digits.
    """
    import torch

    if not sha256:
        if net is None:
            raise ValueError("model_key needs the weights' sha256 or the network")
        sha256 = _state_digest(net)
    blob = json.dumps(
        {"sha256": sha256, "config": config.to_dict(), "torch": torch.__version__, "opset": OPSET, "layout": _LAYOUT},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _graph(net: nn.Module, config: ModelConfig) -> nn.Module:
    """The module exported: ``uint8 (B, H, W, 3)`` -> combined map ``float32 (B, H, W)``."""
    import torch
    from torch import nn

    from .inference import combine_outputs

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # The same operations, in the same order, as NucleusModel.predict: the maps agree to rounding.
            x = x.permute(0, 3, 1, 2).float() / 255.0
            return combine_outputs(self.net((x - self.mean) / self.std))

    return Graph().eval()


def export_onnx(net: nn.Module, config: ModelConfig) -> bytes:
    """Export a network, with its normalisation and output combination, to ONNX.

    Parameters
    ----------
    net : torch.nn.Module
        The network (any device; exported from a float32 CPU copy in eval mode).
    config : ModelConfig

    Returns
    -------
    bytes
        A serialised ONNX model with input ``rgb`` (``uint8``, ``(batch, height,
        width, 3)``, height and width multiples of ``config.stride``) and output
        ``prob`` (``float32``, ``(batch, height, width)``); batch, height and width
        are dynamic.
    """
    import copy

    import torch

    cpu_net = copy.deepcopy(net).float().cpu().eval().to(memory_format=torch.contiguous_format)
    graph = _graph(cpu_net, config)
    side = 2 * config.stride
    example = torch.zeros(1, side, side, config.in_channels, dtype=torch.uint8)
    buf = io.BytesIO()
    with torch.inference_mode(), warnings.catch_warnings():
        # combine_outputs branches on the channel count, a constant of the model: the trace is right.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter is deprecated since torch 2.9 (and warns from inside itself) but still
        # shipped; the new one needs onnxscript and stride-aligned dynamic dimensions.
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter (dynamo=False): no onnxscript dependency, dynamic axes by name.
        torch.onnx.export(
            graph,
            (example,),
            buf,
            input_names=["rgb"],
            output_names=["prob"],
            dynamic_axes={"rgb": {0: "batch", 1: "height", 2: "width"}, "prob": {0: "batch", 1: "height", 2: "width"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def _session_options(ort: Any, threads: int, spin: bool) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # explicit: ORT's default is every core, oblivious of torch's setting
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The memory pattern pre-plans one block per input shape: +300 MB peak RSS at 1024 px, speed within
    # the noise of our measurements; the arena stays on (without it every run pays page faults: ~1.8x slower).
    opts.enable_mem_pattern = False
    # Spinning workers waste a core that the slide runner's watershed threads could use.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.log_severity_level = 3  # errors only
    return opts


class _Rebuilt:
    """Pickled as the arguments it was built from, and built again when unpickled.

    Runtime sessions cannot be pickled; the network they were exported from can, so a
    model sent to Dask workers compiles its engine again there.
    """

    _init_args: tuple[Any, ...]

    def __getstate__(self) -> dict[str, Any]:
        return {"init_args": self._init_args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        net, config, sha256, kwargs = state["init_args"]
        self.__init__(net, config, sha256, **kwargs)  # type: ignore[misc]


class OnnxNetwork(_Rebuilt):
    """A model's network as an ONNX Runtime session on the CPU.

    Parameters
    ----------
    net : torch.nn.Module
        The network to export (when the cache has no file for it yet).
    config : ModelConfig
    sha256 : str
        Checksum of the weights (cache key; the parameters are hashed when empty).
    threads : int
        ONNX Runtime intra-op threads (>= 1).
    spin : bool
        Let idle worker threads spin (lower latency, but a busy core).
    cache : bool
        Read and write the exported file in :func:`cache_dir`. When the folder cannot
        be written the export is used from memory (with a warning).

    Attributes
    ----------
    path : pathlib.Path or None
        The cached ONNX file in use, None when it came from memory only.
    threads : int
    """

    def __init__(
        self,
        net: nn.Module,
        config: ModelConfig,
        sha256: str,
        *,
        threads: int,
        spin: bool = False,
        cache: bool = True,
    ) -> None:
        ort = require_onnxruntime()
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.config = config
        self.threads = int(threads)
        # For _Rebuilt (the network is shared with the NucleusModel, not copied).
        self._init_args = (net, config, sha256, {"threads": self.threads, "spin": spin, "cache": cache})
        opts = _session_options(ort, self.threads, spin)
        self.session, self.path = _built_from_export(
            net, config, sha256, cache, lambda data: ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        )

    def __repr__(self) -> str:
        return f"OnnxNetwork(name={self.config.name!r}, threads={self.threads}, path={str(self.path)!r})"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Combined map of a ``uint8 (B, H, W, 3)`` batch whose H and W are multiples of the stride."""
        (out,) = self.session.run(["prob"], {"rgb": np.ascontiguousarray(batch)})
        return out


class OpenVinoNetwork(_Rebuilt):
    """A model's network compiled by OpenVINO for the CPU (from the same cached ONNX export).

    Parameters
    ----------
    net : torch.nn.Module
        The network to export (when the cache has no file for it yet).
    config : ModelConfig
    sha256 : str
        Checksum of the weights (cache key; the parameters are hashed when empty).
    threads : int
        OpenVINO inference threads (>= 1). Threads are not pinned to cores, so the
        slide runner's post-processing threads share the cores freely.
    precision : {"float32", "bfloat16"}
        Arithmetic of the network. ``"bfloat16"`` uses the CPU's bfloat16 instructions
        (AMX or AVX512-BF16); on a CPU without them OpenVINO computes in float32, with a
        warning (``precision`` then says ``"float32"``).
    cache : bool
        Read and write the exported file in :func:`cache_dir` (as :class:`OnnxNetwork`).

    Attributes
    ----------
    path : pathlib.Path or None
        The cached ONNX file in use, None when it came from memory only.
    threads : int
    precision : str
        The arithmetic actually used.
    """

    def __init__(
        self, net: nn.Module, config: ModelConfig, sha256: str, *, threads: int, precision: str = "float32", cache: bool = True
    ) -> None:
        require_openvino()  # the clear error when the extra is missing
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16' for OpenVINO, got {precision!r}")
        self.config = config
        self.threads = int(threads)
        self._init_args = (net, config, sha256, {"threads": self.threads, "precision": precision, "cache": cache})
        core = _openvino_core()
        hint = "f32"
        if precision == "bfloat16":
            if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                hint = "bf16"
            else:
                logger.warning("this CPU has no bfloat16 instructions: OpenVINO computes in float32")
        self.precision = "bfloat16" if hint == "bf16" else "float32"
        props = {
            "INFERENCE_NUM_THREADS": self.threads,
            # Explicit: OpenVINO's default on CPUs with AMX is bfloat16, which must be asked for here.
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled, self.path = _built_from_export(
            net, config, sha256, cache, lambda data: core.compile_model(core.read_model(data), "CPU", props)
        )
        self._local = threading.local()  # an infer request is not thread-safe: one per calling thread

    def __repr__(self) -> str:
        return (
            f"OpenVinoNetwork(name={self.config.name!r}, threads={self.threads}, precision={self.precision!r}, "
            f"path={str(self.path)!r})"
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Combined map of a ``uint8 (B, H, W, 3)`` batch whose H and W are multiples of the stride."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: np.ascontiguousarray(batch)}, share_outputs=False)  # a copy: the request reuses its buffer
        return out[self.compiled.output(0)]


@functools.lru_cache(maxsize=1)
def _openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, shared by every compiled network.

    One per process as OpenVINO's own samples do: other projects saw processes that
    created a ``Core`` per model crash later (ultralytics/ultralytics#25864,
    openvinotoolkit/openvino#35338).
    """
    return require_openvino().Core()


def _built_from_export(
    net: nn.Module, config: ModelConfig, sha256: str, cache: bool, build: Callable[[bytes], Any]
) -> tuple[Any, Path | None]:
    """``build`` applied to the model's ONNX export, and the cached file used (None: from memory).

    The export is read from :func:`cache_dir` when there; when it is missing or does not
    build (a truncated or foreign file), the network is exported (again) and cached.
    """
    path = cache_dir() / f"{_file_safe(config.name)}-{model_key(config, sha256, net)}.onnx" if cache else None
    data = _read_or_none(path) if path is not None else None
    if data is not None:
        try:
            return build(data), path
        except Exception as exc:  # noqa: BLE001 - each runtime raises its own types (InvalidProtobuf, Fail...)
            logger.warning("cached ONNX model does not load (%s); exporting it again", exc)
    data = export_onnx(net, config)
    path = _store(path, data)
    return build(data), path


def _file_safe(name: str) -> str:
    """``name`` reduced to characters safe in a file name (a model name is free text)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40].strip("._") or "model"


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _store(path: Path | None, data: bytes) -> Path | None:
    """Cache ``data`` at ``path``; None (and a warning) when the folder is not writable."""
    from .export.result import ResultError, atomic_writer

    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the project's one atomic write (temporary file beside it, then a rename; 0644, so a
        # cache shared through NUCSEG_CACHE_DIR is readable): readers see no file or a whole one
        with atomic_writer(path, overwrite=True, mode="wb") as f:
            f.write(data)
    except (OSError, ResultError) as exc:
        logger.warning("cannot cache the ONNX model in %s (%s); using it from memory", path.parent, exc)
        return None
    return path
