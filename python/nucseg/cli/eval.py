"""``nucseg-eval``: score cross-validation runs on their held-out patients (Table 1)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nucseg.cli import run_guarded

EPILOG = """\
examples:
  # score the held-out patients of cross-validation runs made by nucseg-train --cv,
  # add the non-learned baseline row, write CSV/JSON under runs/eval
  nucseg-eval --data shared/data/tnbc --run runs/cv_default --run runs/cv_pangnet --out runs/eval

  # the paper's ensemble: average the probability maps of three runs that share their splits
  nucseg-eval --data shared/data/tnbc --run runs/cv_fcn8s --ensemble Ensemble=runs/cv_pangnet,runs/cv_fcn8s,runs/cv_deconvnet

  # one trained model (e.g. the bundled default) on some patients; this is NOT a held-out score
  # when the model saw these patients during training
  nucseg-eval --data shared/data/tnbc --model default --patients 01,02 --no-baseline

  # leave-one-dataset-out (multi-organ generalization): each source scored by the model
  # trained without it (runs/lodo/<source>/), the MoNuSeg 2018 test set by runs/lodo/all/,
  # beside the bundled models (default, TNBC-only; multiorgan and default+multiorgan, "seen"
  # where they trained) and the baseline; mean ± std over images
  nucseg-eval --lodo runs/lodo --cache data_cache --data shared/data/tnbc --out runs/eval_lodo

Every table row is the mean ± std over held-out patients of the per-patient mean
over their images. lam/threshold come from each fold's model JSON, where
nucseg-train tuned them on that fold's training patients only.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="nucseg-eval",
        description="Evaluate nucleus segmentation on TNBC patients held out by cross-validation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=None, help="TNBC folder with Slide_XX/ and GT_XX/ (required except with --lodo)")
    p.add_argument("--run", action="append", default=[], metavar="DIR", help="cross-validation run folder (repeatable)")
    p.add_argument("--name", action="append", default=None, help="row name of each --run, in order (default: its preset)")
    p.add_argument(
        "--ensemble", action="append", default=[], metavar="NAME=DIR,DIR,...", help="average the maps of runs sharing splits"
    )
    p.add_argument("--model", action="append", default=[], metavar="PATH", help="a single model: a weights file or a bundled name ('default', 'multiorgan', 'default+multiorgan')")
    p.add_argument("--patients", default=None, help="comma-separated patients for --model and the baseline (default: all)")
    p.add_argument(
        "--retune",
        action="store_true",
        help="re-tune lam/threshold/min_area on each fold's training patients instead of using the model JSON's",
    )
    p.add_argument(
        "--lodo", default=None, metavar="RUNS", help="leave-one-dataset-out table from RUNS/<source>/ models (see examples)"
    )
    p.add_argument("--cache", default=None, help="converted public sources (scripts/nucseg_data.py), for --lodo")
    p.add_argument(
        "--coarse", action="store_true", help="with --lodo: also run the bundled model at 0.5 um/px (twice its pixel size)"
    )
    p.add_argument(
        "--sources", default=None, help="comma-separated sources for --lodo (default: tnbc, monuseg2018_train, cpm15, consep, gbm40, dsb2018_he, monuseg2018_test)"
    )
    p.add_argument("--no-baseline", action="store_true", help="omit the non-learned baseline row")
    p.add_argument("--out", default=None, help="folder for images.csv, patients.csv, summary.csv, results.json")
    p.add_argument("--tta", action="store_true", help="average each network over 8 rotations/flips (8x slower)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only the table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nucseg-eval``."""
    args = build_parser().parse_args(argv)
    return run_guarded(
        _run,
        args,
        prog="nucseg-eval",
        errors=(ValueError, TypeError, FileNotFoundError),
        status=2,
        interrupted="nucseg-eval: interrupted",
    )


def _folds(run: Path) -> list[tuple[dict[str, Any], Path]]:
    """(split, model weights) of each fold of a cross-validation run folder."""
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    out = []
    for split_file in sorted(run.glob("fold_*/split.json")):
        split = json.loads(split_file.read_text())
        weights = split_file.parent / f"{split['preset']}.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"fold {split_file.parent} has no trained model {weights.name} (still training?)")
        out.append((split, weights))
    if not out:
        raise FileNotFoundError(f"{run} holds no fold_XX/split.json; make it with nucseg-train --cv")
    return out


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data import load_tnbc
    from ..evaluate import (
        DEFAULT_MIN_AREAS,
        format_table,
        score_images,
        summarise,
        tune_postprocess,
        write_results,
    )
    from .._recipe import PostprocessRecipe
    from ..inference import is_bundled, load_model

    torch.set_num_threads(args.threads)
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.lodo is not None:
        if args.tta:
            raise ValueError("--tta is not available with --lodo (the protocol scores each model as a slide run uses it)")
        return _run_lodo(args)
    if args.data is None:
        raise ValueError("--data (the TNBC folder) is required")
    if not (args.run or args.ensemble or args.model or not args.no_baseline):
        raise ValueError("nothing to evaluate: give --run, --ensemble, --model, or keep the baseline")
    if args.name is not None and len(args.name) != len(args.run):
        raise ValueError(f"--name given {len(args.name)} times but --run {len(args.run)} times")
    images = load_tnbc(args.data)
    by_patient: dict[str, list] = {}
    for im in images:
        by_patient.setdefault(im.patient, []).append(im)
    wanted = set(args.patients.split(",")) if args.patients else set(by_patient)
    unknown = wanted - set(by_patient)
    if unknown:
        raise ValueError(f"--patients {sorted(unknown)} not in {args.data}")

    jobs: list[tuple[str, list[tuple[dict[str, Any], list[Path]]]]] = []
    for i, run in enumerate(args.run):
        folds = _folds(Path(run))
        name = args.name[i] if args.name else folds[0][0]["preset"]
        jobs.append((name, [(s, [w]) for s, w in folds]))
    for spec in args.ensemble:
        name, sep, dirs = spec.partition("=")
        if not sep or not dirs:
            raise ValueError(f"--ensemble expects NAME=DIR,DIR,..., got {spec!r}")
        per_run = [_folds(Path(d)) for d in dirs.split(",")]
        folds = []
        for parts in zip(*per_run):
            tests = {tuple(s["test_patients"]) for s, _ in parts}
            if len(tests) != 1:
                raise ValueError(f"ensemble {name}: runs {dirs} do not share their splits")
            folds.append((parts[0][0], [w for _, w in parts]))
        jobs.append((name, folds))

    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        total = sum(len(s["test_patients"]) for _, fs in jobs for s, _ in fs) + len(args.model) + (0 if args.no_baseline else 1)
        bar = tqdm(total=total, desc="eval", unit="patient-set", dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"folds": {}}
    for name, folds in jobs:
        for split, weights in folds:
            models = [load_model(w, device=args.device) for w in weights]
            test = [im for p in split["test_patients"] for im in by_patient.get(p, [])]
            if len(models) == 1:
                cfg = models[0].config
                lam, thr, area = cfg.lam, cfg.threshold, cfg.min_area
                predict = lambda rgb, m=models[0]: m.predict(rgb, tta=args.tta)  # noqa: E731
            else:
                predict = lambda rgb, ms=models: np.mean([m.predict(rgb, tta=args.tta) for m in ms], axis=0)  # noqa: E731
            if len(models) > 1 or args.retune:
                # Tune the watershed on this fold's training patients only (never the held-out ones).
                train = [im for p in split["train_patients"] for im in by_patient.get(p, [])]
                maps = [predict(im.rgb) for im in train]
                lam, thr, area, _ = tune_postprocess(None, train, maps=maps, min_areas=DEFAULT_MIN_AREAS)
            meta["folds"].setdefault(name, []).append(
                {**split, "lam": lam, "threshold": thr, "min_area": area, "weights": [str(w) for w in weights]}
            )
            recipe = PostprocessRecipe(lam=lam, threshold=thr, min_area=area)
            seg = lambda im, recipe=recipe: recipe.labels(predict(im.rgb))  # noqa: E731
            rows += score_images(test, seg, name)
            if bar is not None:
                bar.update(len(split["test_patients"]))
    chosen = [im for im in images if im.patient in wanted]
    for path in args.model:
        model = load_model(path, device=args.device)
        # Every bundled model trained on every TNBC image.
        name = f"{model.config.name} (not held out)" if is_bundled(path) else Path(path).stem
        rows += score_images(chosen, lambda im: model.postprocess(model.predict(im.rgb, tta=args.tta)), name)
        if bar is not None:
            bar.update(1)
    if not args.no_baseline:
        from ..baseline import segment_baseline

        rows += score_images(chosen, lambda im: segment_baseline(im.rgb, mpp=0.25), "Baseline (no learning)")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    print(format_table(summarise(rows)))
    if args.out:
        paths = write_results(args.out, rows, meta)
        if not args.quiet:
            print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _run_lodo(args: argparse.Namespace) -> int:
    """``--lodo``: the leave-one-dataset-out table (nucseg.generalization)."""
    from ..generalization import PROTOCOL_SOURCES, format_lodo_table, run_protocol, summarise_sources, write_lodo

    if args.cache is None:
        raise ValueError("--lodo needs --cache (the folder scripts/nucseg_data.py converted the sources into)")
    sources = args.sources.split(",") if args.sources else [s for s in PROTOCOL_SOURCES if s != "tnbc" or args.data]
    rows, notes = run_protocol(
        args.lodo, args.cache, args.data, sources, device=args.device, baseline=not args.no_baseline, coarse=args.coarse,
        progress=not args.quiet,
    )
    summary = summarise_sources(rows)
    print(format_lodo_table(summary, notes))
    if args.out:
        paths = write_lodo(args.out, rows, summary, {"runs": str(args.lodo), "sources": sources})
        if not args.quiet:
            print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
