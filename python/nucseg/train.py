"""Training of the segmentation networks on TNBC-style data.

One run = one :class:`TrainConfig`, a list of training images and an output
folder. The folder receives

* ``checkpoint.safetensors`` / ``checkpoint_optim.safetensors`` /
  ``checkpoint.json``: the last state (weights, optimiser tensors, RNG states,
  iteration, loss log), written every ``checkpoint_every`` iterations so a
  killed run resumes where it stopped (``resume=True``). Nothing is pickled.
* ``model.safetensors`` + ``model.json``: the final model, loadable with
  :func:`nucseg.load_model`, with its measured halo and the watershed
  parameters tuned on the *training* images.

Loss: the weighted log loss of Naylor et al. (per-pixel weights = class
balance + emphasis between touching nuclei) on the nucleus channel; models with
a second channel also regress the normalised distance map (binary cross-entropy
against the soft target, weight ``aux_weight``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import AugmentConfig, TNBCImage, augment_sample, instance_distance, loss_weights
from .inference import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, receptive_halo, save_model
from .models import build_model, count_parameters

__all__ = [
    "PRESETS",
    "PreparedImage",
    "TrainConfig",
    "TrainResult",
    "TrainingRecord",
    "image_digest",
    "load_checkpoint",
    "prepare_images",
    "preset",
    "seg_loss",
    "train",
    "training_record",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of one training run (stored in checkpoints and model JSON).

    Attributes
    ----------
    arch : str
        Architecture name (:func:`nucseg.models.build_model`).
    arch_kwargs : dict
        Constructor arguments.
    out_channels : int
        1 = nucleus only; 2 = nucleus + normalised distance (the default model).
    iterations : int
        Optimiser steps.
    batch_size, crop : int
        Crops per step and crop side (a multiple of the stride).
    optimizer : {"sgd", "adamw"}
        SGD with momentum 0.9 as in the paper, or AdamW.
    lr, momentum, weight_decay : float
    warmup : int
        Linear warm-up steps; the learning rate then follows a cosine to 0.
    time_budget_min : float, optional
        When set, the schedule's progress is ``max(step / iterations,
        elapsed / budget)`` and training stops when the budget is spent, so a
        run always ends on time with a decayed learning rate (bit-for-bit
        reproducible only when the budget does not bind).
    w0, sigma : float
        Between-nuclei weight strength and width of the loss weights.
    aux_weight : float
        Weight of the distance-map loss.
    seed : int
    checkpoint_every : int
    mpp : float
        Resolution of the training images (um/px).
    encoder_weights : str, optional
        Local torchvision VGG16 state dict for the VGG encoders.
    init_weights : str, optional
        A trained nucseg model (``.safetensors`` with its ``.json``, e.g. the
        bundled default) whose weights start the network: fine-tuning. Its
        architecture, ``arch_kwargs`` and output channels must be the recipe's.
        The schedule (warm-up, then a cosine from ``lr``) starts afresh, so give
        a lower ``lr`` than the preset's.
    augment : AugmentConfig
    augment_on : {"cpu", "device"}
        ``"cpu"``: each crop augmented with numpy/scipy (:func:`nucseg.data.augment_sample`),
        in this process or in loader processes. ``"device"``: the whole batch
        augmented with torch on the training device (:mod:`nucseg.batch_augment`):
        on a GPU this removes the CPU bottleneck. Same transformations, another
        elastic-field generator and random stream, so another (equivalent) recipe.
    precision : {"float32", "bfloat16"}
        Arithmetic of the network's forward and backward passes: ``"bfloat16"``
        autocasts them to bfloat16 (weights, optimiser and loss stay float32; no
        loss scaling is needed, bfloat16 has float32's range). On CPUs with AMX and
        on recent GPUs, several times faster per step; elsewhere slower. Not free:
        after 3,000 steps of the union recipe, 0.026 AJI below float32 on held-out
        TNBC patients (docs/RESULTS.md).
    """

    arch: str = "unet"
    arch_kwargs: dict = field(default_factory=lambda: {"width": 16, "depth": 3})
    out_channels: int = 2
    iterations: int = 3000
    batch_size: int = 4
    crop: int = 256
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup: int = 100
    time_budget_min: float | None = None
    w0: float = 10.0
    sigma: float = 5.0
    aux_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    mpp: float = 0.25
    encoder_weights: str | None = None
    init_weights: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_on: str = "cpu"
    precision: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`.

        An augmentation field missing from ``d`` (a recipe saved before it existed) takes the
        value that reproduces that recipe (:meth:`nucseg.data.AugmentConfig.from_dict`).
        """
        d = dict(d)
        augment = AugmentConfig.from_dict(dict(d.pop("augment", {})))
        return cls(**d, augment=augment)


@dataclass(frozen=True)
class PreparedImage:
    """An image with its training targets (all ``(H, W)``)."""

    rgb: np.ndarray
    mask: np.ndarray
    distance: np.ndarray
    weights: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced."""

    model_path: Path
    iterations: int
    seconds: float
    final_loss: float


def _once_per_object(items: Sequence[Any], fn: Callable[[Any], Any]) -> list[Any]:
    """``[fn(x) for x in items]``, calling ``fn`` once per distinct object: entries that are the
    same object (a balanced draw list repeats a small source's images many times) share one
    result, so repeats cost neither time nor memory."""
    done: dict[int, Any] = {}
    return [done[id(x)] if id(x) in done else done.setdefault(id(x), fn(x)) for x in items]


def prepare_images(images: Sequence[TNBCImage], *, w0: float = 10.0, sigma: float = 5.0) -> list[PreparedImage]:
    """Compute the loss weights and distance targets of each image once (repeated entries of
    one image share them)."""
    return _once_per_object(
        images,
        lambda im: PreparedImage(
            im.rgb,
            im.mask.astype(np.float32),
            instance_distance(im.labels),
            loss_weights(im.labels, w0=w0, sigma=sigma),
            im.labels,
        ),
    )


def seg_loss(logits: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, distance: torch.Tensor | None, aux_weight: float) -> torch.Tensor:
    """Weighted log loss on channel 0, plus the distance loss on channel 1 if present.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, H, W)`` network output.
    mask, weights, distance : torch.Tensor
        ``(B, H, W)`` targets: binary nucleus mask, per-pixel weights,
        normalised distance in ``[0, 1]``.
    aux_weight : float
        Weight of the distance term.
    """
    ce = F.binary_cross_entropy_with_logits(logits[:, 0], mask, reduction="none")
    loss = (ce * weights).sum() / weights.sum()
    if logits.shape[1] > 1 and distance is not None:
        loss = loss + aux_weight * F.binary_cross_entropy_with_logits(logits[:, 1], distance)
    return loss


def _sample_batch(
    rng: np.random.Generator, data: Sequence[PreparedImage], cfg: TrainConfig, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    xs, ms, ws, ds = [], [], [], []
    for _ in range(cfg.batch_size):
        im = data[int(rng.integers(len(data)))]
        img, (m, d, w) = augment_sample(
            rng, im.rgb, [im.mask, im.distance, im.weights], cfg.crop, cfg.augment, nearest=[True, False, False]
        )
        xs.append(img)
        ms.append(m)
        ds.append(d)
        ws.append(w)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
    x = (x - mean) / std
    return x.contiguous(), torch.from_numpy(np.stack(ms)), torch.from_numpy(np.stack(ws)), torch.from_numpy(np.stack(ds))


class _Batches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of step ``start + i``, drawn from a generator seeded by (seed, step).

    Seeding each step instead of drawing from one stream makes a run's batches
    independent of how many loader processes draw them and of where it was resumed.
    """

    def __init__(self, data: Sequence[PreparedImage], cfg: TrainConfig, start: int) -> None:
        self.data, self.cfg, self.start = data, cfg, start
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return max(self.cfg.iterations - self.start, 0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.cfg.seed, self.start + i])
        return _sample_batch(rng, self.data, self.cfg, self.mean, self.std)


def _batch_loader(data: Sequence[PreparedImage], cfg: TrainConfig, start: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """Batches from ``start`` on, augmented in ``workers`` processes (0 = in this process)."""
    return torch.utils.data.DataLoader(
        _Batches(data, cfg, start),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_one_thread if workers else None,
        # Not fork: a process that has run OpenVINO (or any library with its own thread pools)
        # may crash when forked; forkserver starts workers from a clean process instead
        # (Windows has neither: its default, spawn, is safe).
        multiprocessing_context="forkserver" if workers and "forkserver" in multiprocessing.get_all_start_methods() else None,
    )


def _device_batches(data: Sequence[PreparedImage], cfg: TrainConfig, start: int, dev: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches from ``start`` on, augmented with torch on ``dev`` (``augment_on="device"``).

    The random parameters are drawn with numpy from a generator seeded by (seed, step),
    as on the CPU path, so a run does not depend on where it was resumed.
    """
    from .batch_augment import draw_crop, render_batch, stack_sources

    sources = _once_per_object(data, lambda im: stack_sources(im.rgb, [im.mask, im.distance, im.weights], dev))
    shapes = [im.rgb.shape[:2] for im in data]
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    for step in range(start, cfg.iterations):
        rng = np.random.default_rng([cfg.seed, step])
        draws = [draw_crop(rng, shapes, cfg.crop, cfg.augment) for _ in range(cfg.batch_size)]
        img, t = render_batch(draws, sources, cfg.crop, cfg.augment, nearest=[True, False, False])
        yield (img - mean) / std, t[:, 0], t[:, 2], t[:, 1]  # x, mask, weights, distance


def _one_thread(_worker: int) -> None:
    # Each loader process augments with numpy; torch threads there would only oversubscribe.
    torch.set_num_threads(1)


def _make_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def _lr_at(progress: float, step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# --------------------------------------------------------------------------- checkpoints (no pickle)


def _save_checkpoint(out: Path, net: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out / "checkpoint.tmp.safetensors"))
    osd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in osd["state"].items():
        for key, val in pstate.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(out / "checkpoint_optim.tmp.safetensors"))
    doc = dict(state, optim_scalars=scalars, param_groups=osd["param_groups"])
    (out / "checkpoint.tmp.json").write_text(json.dumps(doc))
    # Rename last so a kill mid-write leaves the previous checkpoint intact.
    for stem in ("checkpoint", "checkpoint_optim"):
        os.replace(out / f"{stem}.tmp.safetensors", out / f"{stem}.safetensors")
    os.replace(out / "checkpoint.tmp.json", out / "checkpoint.json")


def load_checkpoint(out: str | os.PathLike, net: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore a training checkpoint written by :func:`train` (safetensors + JSON only).

    Parameters
    ----------
    out : str or os.PathLike
        Run folder.
    net : torch.nn.Module
        Receives the weights.
    opt : torch.optim.Optimizer, optional
        Receives the optimiser state.

    Returns
    -------
    dict
        The JSON state (iteration, RNG state, config, loss log...).
    """
    from safetensors.torch import load_file

    out = Path(out)
    meta = out / "checkpoint.json"
    if not meta.is_file():
        raise FileNotFoundError(f"no checkpoint in {out} (checkpoint.json missing)")
    doc = json.loads(meta.read_text())
    net.load_state_dict(load_file(str(out / "checkpoint.safetensors")))
    tensors = load_file(str(out / "checkpoint_optim.safetensors"))
    if opt is not None:
        state: dict[int, dict[str, Any]] = {}
        for key, val in tensors.items():
            if key.startswith("rng."):
                continue
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = val
        for pid, sc in doc.get("optim_scalars", {}).items():
            state.setdefault(int(pid), {}).update(sc)
        opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return doc


# --------------------------------------------------------------------------- training


def train(
    cfg: TrainConfig,
    images: Sequence[TNBCImage],
    out_dir: str | os.PathLike,
    *,
    name: str = "model",
    resume: bool = True,
    progress: bool = False,
    tune: bool = True,
    threads: int | None = None,
    stop_after: int | None = None,
    device: str | torch.device | None = "cpu",
    workers: int = 0,
) -> TrainResult:
    """Train a network and write its final model to ``out_dir``.

    Parameters
    ----------
    cfg : TrainConfig
        The recipe.
    images : sequence of TNBCImage
        Training images (never the held-out patients).
    out_dir : str or os.PathLike
        Run folder (created).
    name : str
        Model name stored in its config.
    resume : bool
        Continue from ``out_dir``'s checkpoint when there is one with the same recipe.
    progress : bool
        Show a tqdm bar with loss and ETA.
    tune : bool
        Grid-search the watershed's ``lam`` and ``threshold`` on ``images``
        (needs the compiled :func:`nucseg.watershed_dynamics`).
    threads : int, optional
        ``torch.set_num_threads`` value.
    stop_after : int, optional
        Stop (with a checkpoint, without writing the model) after this many
        steps in this call; a later call resumes. For chunked runs and tests.
    device : str or torch.device, optional
        Where the network trains: ``"cpu"`` (default), ``"cuda"``, or ``None``
        for CUDA when available. The result does not depend on it beyond
        floating-point rounding.
    workers : int
        Processes that augment batches ahead of the optimiser (0 = in this
        process). Batches are seeded per step, so the run is the same for any
        value; on a GPU the augmentation is the bottleneck, so use several.

    Returns
    -------
    TrainResult
    """
    if not images:
        raise ValueError("images is empty: training needs at least one image")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if cfg.augment_on not in ("cpu", "device"):
        raise ValueError(f"augment_on must be 'cpu' or 'device', got {cfg.augment_on!r}")
    if cfg.precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {cfg.precision!r}")
    from .inference import _resolve_device

    dev = _resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.arch, 3, cfg.out_channels, **cfg.arch_kwargs)
    stride = int(getattr(net, "stride", 1))
    if cfg.crop % stride:
        raise ValueError(f"crop {cfg.crop} must be a multiple of the {cfg.arch} stride {stride}")
    if cfg.encoder_weights:
        from .models import load_vgg16_encoder

        if not hasattr(net, "stages"):
            raise ValueError(f"--encoder-weights applies to VGG models (fcn8s, deconvnet), not {cfg.arch!r}")
        load_vgg16_encoder(net.stages, cfg.encoder_weights)
    init = _load_init_weights(net, cfg) if cfg.init_weights else None
    # Channels-last: oneDNN and cuDNN run these convolutions fastest in NHWC (a CPU step of
    # the default recipe: 1.45x faster). Checkpoints store plain contiguous tensors.
    net.to(dev).to(memory_format=torch.channels_last)
    opt = _make_optimizer(net, cfg)
    step, elapsed, losses = 0, 0.0, []
    if resume and (out / "checkpoint.json").is_file():
        prev = json.loads((out / "checkpoint.json").read_text())
        # Through from_dict, so a recipe saved before a field existed compares with its default.
        changed = _changed_fields(TrainConfig.from_dict(prev.get("config", {})).to_dict(), cfg.to_dict())
        if changed:
            raise ValueError(f"{out} holds a checkpoint of a different recipe (differing: {', '.join(changed)}); "
                             "use another folder or resume=False")
        doc = load_checkpoint(out, net, opt)
        step, elapsed, losses = doc["step"], doc["elapsed"], doc["losses"]
        log.info("resumed %s at step %d", out, step)
    data = prepare_images(images, w0=cfg.w0, sigma=cfg.sigma)
    if cfg.augment_on == "device":
        batches = _device_batches(data, cfg, step, dev)
    else:
        batches = iter(_batch_loader(data, cfg, step, workers, pin=dev.type == "cuda"))
    budget = None if cfg.time_budget_min is None else 60.0 * cfg.time_budget_min

    def progress_at(s: int, t: float) -> float:
        p = s / cfg.iterations
        return max(p, t / budget) if budget else p

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=step, desc=name, unit="it", dynamic_ncols=True)
    net.train()
    t_start = time.perf_counter() - elapsed
    ema = losses[-1] if losses else None
    stop_at = None if stop_after is None else step + stop_after
    try:
        while step < cfg.iterations and step != stop_at and progress_at(step, time.perf_counter() - t_start) < 1.0:
            lr = _lr_at(progress_at(step, time.perf_counter() - t_start), step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            x, m, w, d = (t.to(dev, non_blocking=True) for t in next(batches))
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
                logits = net(x)
            loss = seg_loss(logits.float(), m, w, d, cfg.aux_weight)  # the loss in float32 (a no-op there)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            val = float(loss.detach())
            if not math.isfinite(val):
                raise FloatingPointError(f"loss became {val} at step {step}; lower the learning rate")
            ema = val if ema is None else 0.98 * ema + 0.02 * val
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{ema:.4f}", "lr": f"{lr:.2e}"}
                if budget:  # the bar's own ETA assumes all iterations run; show the budget's
                    post["left"] = f"{max(budget - (time.perf_counter() - t_start), 0) / 60:.1f}min"
                bar.set_postfix(post)
            if step % cfg.checkpoint_every == 0:
                losses.append(round(ema, 5))
                _save_checkpoint(out, net, opt, _state(cfg, step, time.perf_counter() - t_start, losses))
    finally:
        del batches  # stops the loader processes now, not at garbage collection
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t_start
    losses.append(round(ema if ema is not None else float("nan"), 5))
    _save_checkpoint(out, net, opt, _state(cfg, step, elapsed, losses))
    if stop_at is not None and step == stop_at and step < cfg.iterations:
        return TrainResult(out / "checkpoint.safetensors", step, elapsed, losses[-1])

    net.eval()
    mconf = ModelConfig(
        name=name,
        arch=cfg.arch,
        in_channels=3,
        out_channels=cfg.out_channels,
        stride=stride,
        mpp=cfg.mpp,
        lam=0.05 if cfg.out_channels > 1 else 0.03,
        threshold=0.3 if cfg.out_channels > 1 else 0.5,
        halo=receptive_halo(net, stride),
        arch_kwargs=dict(cfg.arch_kwargs),
    )
    extra = {"recipe": cfg.to_dict(), "steps": step, "seconds": round(elapsed, 1), "threads": torch.get_num_threads(),
             "device": _device_name(dev), "loader_workers": workers if cfg.augment_on == "cpu" else 0, "parameters": count_parameters(net),
             "patients": sorted({im.patient for im in images}), "image_digests": sorted(image_digest(im.rgb) for im in images),
             "loss_log": losses}
    if init is not None:
        extra["init_weights"] = init
    if tune:
        # Tune on the network in memory, then write the model once: the weights are the
        # same tensors a reload would read (safetensors stores them exactly).
        from .evaluate import DEFAULT_MIN_AREAS, tune_postprocess
        from .inference import NucleusModel

        model = NucleusModel(mconf, net, sha256="", device=dev)
        lam, thr, area, score = tune_postprocess(model, images, min_areas=DEFAULT_MIN_AREAS)
        mconf = dataclasses.replace(mconf, lam=lam, threshold=thr, min_area=area)
        extra["tuned_on_training_images"] = {"lam": lam, "threshold": thr, "min_area": area, "aji": round(score, 4)}
    path = save_model(net, mconf, out / f"{name}.safetensors", **extra)
    return TrainResult(path, step, elapsed, losses[-1])


def _load_init_weights(net: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Copy a trained model's weights into ``net`` (checksum-verified, safetensors only).

    Returns what the model JSON records about where the weights came from.
    """
    from .inference import load_model

    src = load_model(cfg.init_weights, device="cpu")
    c = src.config
    mine = (cfg.arch, dict(cfg.arch_kwargs), cfg.out_channels)
    theirs = (c.arch, dict(c.arch_kwargs), c.out_channels)
    if mine != theirs:
        raise ValueError(
            f"init_weights {cfg.init_weights} is a {theirs[0]} {theirs[1]} with {theirs[2]} output channels; "
            f"the recipe builds a {mine[0]} {mine[1]} with {mine[2]}"
        )
    net.load_state_dict(src.net.state_dict(), strict=True)
    return {"path": str(cfg.init_weights), "sha256": src.sha256, "patients": training_record(cfg.init_weights).patients}


def image_digest(rgb: np.ndarray) -> str:
    """A short fingerprint of an image's pixels (first 16 hex digits of a SHA-256 of shape and bytes).

    Models record the digests of their training images, so a later run can tell
    whether a starting model has seen an image without relying on file or
    patient names, which differ between datasets.
    """
    arr = np.ascontiguousarray(rgb)
    h = hashlib.sha256(repr((arr.shape, arr.dtype.str)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TrainingRecord:
    """What a saved model records about its training data.

    Attributes
    ----------
    patients : list of str or None
        Patient ids, or None when nothing records them.
    image_digests : frozenset of str or None
        :func:`image_digest` of every training image (models trained since
        2026-11-26 and the bundled default), or None.
    """

    patients: list[str] | None
    image_digests: frozenset[str] | None


def training_record(path: str | os.PathLike) -> TrainingRecord:
    """The training patients and image fingerprints a saved model records.

    Read from the model JSON's ``training`` section, or for older
    cross-validation folds from the ``split.json`` beside the model (patients only).

    Parameters
    ----------
    path : str or os.PathLike
        The model's ``.safetensors`` or ``.json``.
    """
    from .inference import _model_paths

    weights, meta = _model_paths(path)
    try:
        training = json.loads(meta.read_text()).get("training", {})
        patients, digests = training.get("patients"), training.get("image_digests")
    except (OSError, json.JSONDecodeError, AttributeError):
        patients, digests = None, None
    if patients is None and (weights.parent / "split.json").is_file():
        try:
            patients = json.loads((weights.parent / "split.json").read_text())["train_patients"]
        except (json.JSONDecodeError, KeyError, TypeError):
            patients = None
    return TrainingRecord(
        None if patients is None else sorted(str(p) for p in patients),
        None if digests is None else frozenset(str(d) for d in digests),
    )


def _changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two recipe dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key == "augment":
            out += _changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def _state(cfg: TrainConfig, step: int, elapsed: float, losses: list[float]) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "step": step, "elapsed": elapsed, "losses": losses}


def _device_name(dev: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "cpu"


# Recipes by name (the CLI's --preset). The paper's networks use SGD as in Naylor et al.;
# the default model uses AdamW, which converges faster within a CPU-hour budget.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"arch": "unet", "arch_kwargs": {"width": 16, "depth": 3}, "out_channels": 2, "optimizer": "adamw", "lr": 2e-3},
    "unet": {"arch": "unet", "arch_kwargs": {"width": 64, "depth": 4}, "out_channels": 1, "optimizer": "sgd", "lr": 0.01},
    "pangnet": {"arch": "pangnet", "arch_kwargs": {"width": 8}, "out_channels": 1, "optimizer": "sgd", "lr": 0.01, "crop": 128, "batch_size": 8},
    "fcn8s": {"arch": "fcn8s", "arch_kwargs": {}, "out_channels": 1, "optimizer": "sgd", "lr": 1e-3},
    "deconvnet": {"arch": "deconvnet", "arch_kwargs": {}, "out_channels": 1, "optimizer": "sgd", "lr": 0.01},
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a named recipe, with overrides.

    Parameters
    ----------
    name : str
        One of :data:`PRESETS`.
    **overrides
        Any :class:`TrainConfig` field; ``arch_kwargs`` is merged, not replaced, and
        ``augment`` may be a dict of :class:`~nucseg.data.AugmentConfig` fields merged
        into the preset's augmentation.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    base = dict(PRESETS[name])
    if "arch_kwargs" in overrides:
        base["arch_kwargs"] = {**base.get("arch_kwargs", {}), **(overrides.pop("arch_kwargs") or {})}
    if isinstance(overrides.get("augment"), dict):
        overrides["augment"] = base.get("augment", AugmentConfig()).merged(overrides.pop("augment"))
    base.update(overrides)
    return TrainConfig(**base)
