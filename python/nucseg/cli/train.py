"""``nucseg-train``: train a network on TNBC, on all patients or patient-wise folds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from nucseg._cpu import usable_cpus
from nucseg.cli import run_guarded

EPILOG = """\
examples:
  # the shipped default model's recipe on all 9 patients, 75 CPU-minutes
  nucseg-train --data shared/data/tnbc --out runs/default --time-budget 75 --iterations 6000

  # the shipped model itself: the same recipe for 4.5 minutes on a GPU (5,187 steps on an H200),
  # then continued from there for 40 CPU-minutes at a quarter of the learning rate (3,371 steps)
  nucseg-train --data shared/data/tnbc --out runs/default_gpu --device cuda --workers 3 --time-budget 4.5 --iterations 30000
  nucseg-train --data shared/data/tnbc --out runs/default_more --init-weights runs/default_gpu/default.safetensors \\
      --lr 5e-4 --time-budget 40 --iterations 20000

  # 3-fold cross-validation grouped by patient, 15 minutes per fold
  nucseg-train --data shared/data/tnbc --out runs/cv_default --cv kfold --folds 3 --time-budget 15

  # the paper's protocol: leave one patient out, PangNet, only folds 0 and 1
  nucseg-train --data shared/data/tnbc --out runs/lopo_pangnet --preset pangnet --cv lopo --fold 0 --fold 1

  # on a GPU, batches are augmented in CPU-count - 1 (at most 8) loader processes
  # by default; they are seeded per step, so the run is the same for any --workers

  # on a GPU, augmenting whole batches there instead (no CPU bottleneck)
  nucseg-train --data shared/data/tnbc --out runs/default_gpu2 --device cuda --augment-on device --iterations 50000

  # fine-tune the bundled default model on your own annotations (TNBC folder layout)
  nucseg-train --data my_annotations --out runs/finetuned --init-weights default --lr 5e-4 --time-budget 30

  # continue each fold of an earlier cross-validation run (same splits) with a fresh, lower schedule
  nucseg-train --data shared/data/tnbc --out runs/cv_more --cv kfold --folds 3 --init-weights runs/cv_default --lr 5e-4 --time-budget 40

  # FCN-8s initialised from a local torchvision VGG16 state dict
  nucseg-train --data shared/data/tnbc --out runs/fcn --preset fcn8s --encoder-weights vgg16.pth

A killed run resumes from its last checkpoint when started again with the same
arguments. Each run folder gets PRESET.safetensors + PRESET.json (default.safetensors
for the default recipe; load with nucseg.load_model); cross-validation writes one fold_XX/ folder per split with a
split.json naming its held-out patients (score them with nucseg-eval).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="nucseg-train",
        description="Train a nucleus segmentation network on the TNBC dataset.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="TNBC folder with Slide_XX/ and GT_XX/")
    p.add_argument("--out", required=True, help="run folder (checkpoints, model, splits)")
    p.add_argument("--preset", default="default", help="recipe: default, unet, pangnet, fcn8s, deconvnet (default: %(default)s)")
    p.add_argument("--arch-kwargs", default=None, help='JSON merged into the constructor kwargs, e.g. \'{"width": 8}\'')
    p.add_argument(
        "--augment",
        default=None,
        metavar="JSON",
        help="JSON merged into the training augmentation (nucseg.data.AugmentConfig), e.g. "
        '\'{"elastic_alpha": 0, "scale": [1, 1], "rotate": false, "blur_p": 0}\'',
    )
    p.add_argument("--iterations", type=int, default=None, help="optimiser steps")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN", help="stop after MIN minutes (schedule follows time)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop", type=int, default=None, help="training crop side in px (multiple of the stride)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--augment-on",
        choices=["cpu", "device"],
        default=None,
        help="where crops are augmented: cpu (scipy, per crop; the presets) or device (torch, per batch, on the "
        "training device: use it on a GPU)",
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default=None,
        help="arithmetic of the network's passes: float32 (the presets) or bfloat16 autocast (weights and loss stay "
        "float32): 2.2-2.6x faster per step on CPUs with AMX, faster on recent GPUs, slower elsewhere; measured "
        "0.026 AJI below float32 after 3,000 steps (docs/RESULTS.md)",
    )
    p.add_argument("--encoder-weights", default=None, metavar="PATH", help="local torchvision VGG16 state dict (fcn8s, deconvnet)")
    p.add_argument(
        "--init-weights",
        default=None,
        metavar="MODEL",
        help="start from a trained model: a .safetensors/.json, a bundled model ('default', 'multiorgan', 'default+multiorgan'), or with --cv an earlier "
        "cross-validation run folder (fold i starts from its fold_i model; splits must match). With --cv, the model "
        "must not have seen a fold's held-out patients",
    )
    p.add_argument("--patients", default=None, help="comma-separated patient ids to use (default: all)")
    p.add_argument("--cv", choices=["none", "lopo", "kfold"], default="none", help="validation splits (default: %(default)s)")
    p.add_argument("--folds", type=int, default=3, help="k for --cv kfold (default: %(default)s)")
    p.add_argument("--fold", type=int, action="append", default=None, help="run only this fold index (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes augmenting batches ahead (default: 0 on the CPU; on a GPU, the usable CPUs - 1, at most 8); "
        "the run does not depend on it",
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-tune", action="store_true", help="skip the lam/threshold grid search")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nucseg-train``."""
    args = build_parser().parse_args(argv)
    return run_guarded(
        _run,
        args,
        prog="nucseg-train",
        errors=(ValueError, TypeError, FileNotFoundError, FloatingPointError),
        status=2,
        interrupted="nucseg-train: interrupted (rerun the same command to resume)",
    )


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import grouped_kfold, leave_one_patient_out, load_tnbc
    from ..train import preset, train

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {
        k: v
        for k, v in {
            "iterations": args.iterations,
            "time_budget_min": args.time_budget,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "encoder_weights": args.encoder_weights,
            "augment_on": args.augment_on,
            "precision": args.precision,
        }.items()
        if v is not None
    }
    for flag, key in (("--arch-kwargs", "arch_kwargs"), ("--augment", "augment")):
        text = getattr(args, key)
        if text:
            try:
                overrides[key] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{flag} is not valid JSON: {exc}") from None
            if not isinstance(overrides[key], dict):
                raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    cfg = preset(args.preset, seed=args.seed, **overrides)
    init = _init_source(args.init_weights)
    patients = args.patients.split(",") if args.patients else None
    images = load_tnbc(args.data, patients)
    out = Path(args.out)
    device = None if args.device == "auto" else args.device
    common = dict(resume=not args.no_resume, progress=not args.quiet, tune=not args.no_tune, threads=args.threads,
                  device=device, workers=_workers(args.workers, device))
    if args.cv == "none":
        if init is not None:
            cfg = dataclasses.replace(cfg, init_weights=str(_init_model(init, None)))
        res = train(cfg, images, out, name=args.preset, **common)
        if not args.quiet:
            print(f"model: {res.model_path} ({res.iterations} steps, {res.seconds / 60:.1f} min, loss {res.final_loss:.4f})")
        return 0
    groups = [im.patient for im in images]
    splits = leave_one_patient_out(groups) if args.cv == "lopo" else grouped_kfold(groups, args.folds, seed=args.seed)
    chosen = range(len(splits)) if args.fold is None else args.fold
    for i in chosen:
        if not 0 <= i < len(splits):
            raise ValueError(f"--fold {i} out of range: there are {len(splits)} folds")
    for i in chosen:
        tr, te = splits[i]
        fold_dir = out / f"fold_{i:02d}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        split = {
            "cv": args.cv,
            "fold": i,
            "train_patients": sorted({images[j].patient for j in tr}),
            "test_patients": sorted({images[j].patient for j in te}),
            "preset": args.preset,
        }
        fold_cfg = cfg
        if init is not None:
            source = _init_model(init, split, [images[j] for j in np.asarray(te)])
            fold_cfg = dataclasses.replace(cfg, init_weights=str(source))
        (fold_dir / "split.json").write_text(json.dumps(split, indent=2) + "\n")
        res = train(fold_cfg, [images[j] for j in np.asarray(tr)], fold_dir, name=args.preset, **common)
        if not args.quiet:
            print(f"fold {i}: held out {split['test_patients']} -> {res.model_path} ({res.seconds / 60:.1f} min)")
    return 0


def _init_source(value: str | None) -> Path | None:
    """``--init-weights`` as a path: the names of :data:`~nucseg.inference.BUNDLED_MODELS` are the bundled models."""
    if value is None:
        return None
    from ..inference import BUNDLED_MODELS

    if value in BUNDLED_MODELS and not Path(value).exists():
        return BUNDLED_MODELS[value]
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"--init-weights: {path} not found (expected a model .safetensors/.json, a bundled model name, or a run folder)")
    return path


def _init_model(source: Path, split: dict | None, held_out: Sequence | None = None) -> Path:
    """The model that starts one run: ``source`` itself, or for fold i of a CV run its ``fold_i`` model.

    With a ``split``, refuses a model that was trained on any of the fold's
    ``held_out`` images (by pixel fingerprint when the model records them, else
    by patient id; a model that records neither is refused too): the fold's
    scores would then not be held out.
    """
    from ..train import image_digest, training_record

    if source.is_dir():
        if split is None:
            raise ValueError(f"--init-weights {source} is a folder; without --cv give a model .safetensors or .json")
        fold_dir = source / f"fold_{split['fold']:02d}"
        models = sorted(p for p in fold_dir.glob("*.json") if p.name not in ("split.json", "checkpoint.json"))
        if len(models) != 1:
            raise ValueError(f"--init-weights: expected one model in {fold_dir}, found {len(models)}")
        theirs = json.loads((fold_dir / "split.json").read_text()) if (fold_dir / "split.json").is_file() else {}
        if theirs.get("test_patients") != split["test_patients"]:
            raise ValueError(
                f"--init-weights: {fold_dir} held out {theirs.get('test_patients')}, this fold holds out "
                f"{split['test_patients']}; use the same --cv, --folds and --seed as that run"
            )
        source = models[0].with_suffix(".safetensors")
    if split is not None:
        rec = training_record(source)
        if rec.image_digests is not None:
            leaked = sorted({im.patient for im in held_out or () if image_digest(im.rgb) in rec.image_digests})
        elif rec.patients is not None:
            leaked = sorted(set(rec.patients) & set(split["test_patients"]))
        else:
            raise ValueError(f"--init-weights: {source} records neither its training images nor its patients, "
                             f"so fold {split['fold']} cannot be checked for leakage")
        if leaked:
            raise ValueError(
                f"--init-weights: {source} was trained on images of patients {leaked}, which fold {split['fold']} "
                "holds out; its scores would not be held out"
            )
    return source


def _workers(workers: int | None, device: str | None) -> int:
    """Loader processes: as asked, else none on the CPU and most cores on a GPU (augmentation is its bottleneck)."""
    if workers is not None:
        return workers
    import torch

    on_gpu = (device is None and torch.cuda.is_available()) or (device or "").startswith("cuda")
    return min(8, max(1, usable_cpus() - 1)) if on_gpu else 0


if __name__ == "__main__":
    raise SystemExit(main())
