"""Multi-organ training runs for the generalization protocol (issue 17).

Trains the default architecture on the union of the public sources (TNBC + the converted
cache of scripts/nucseg_data.py), balanced across sources, every image rescaled to the
model's um/px from its own mpp. ``--hold-out SOURCE`` leaves one source out (the
leave-one-dataset-out protocol); the MoNuSeg 2018 test patients are never read (the cache
keeps them apart and :func:`nucseg.datasets.iter_source` refuses them for training).

    python scripts/multiorgan.py --cache /work/data_cache --tnbc ../shared/data/tnbc \\
        --out runs/union --minutes 30 --init default
    python scripts/multiorgan.py ... --hold-out cpm15 --out runs/lodo_cpm15 --minutes 15 --init default

Augmentation: nucseg.data.AugmentConfig's defaults, i.e. with the HED stain jitter whose ranges
were measured on these sources (scripts/stain_stats.py, docs/DATA.md "Augmentation"), blur and
JPEG artefacts. ``--augment JSON`` changes fields, e.g. the colour augmentation of runs made
before issue 17: ``--augment '{"hed_scale": [0, 0, 0], "hed_shift": [0, 0, 0], "jpeg_p": 0,
"stain": 0.15, "contrast": 0.12}'``.

Resumable: run the same command again after a stop. The watershed's lam / threshold /
min_area are tuned on the training images only (each image once, not its repeats).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path


from nucseg.data import TNBCImage, load_tnbc
from nucseg.datasets import load_source, rescale_pair

# Sources with full instance annotations. monuseg2018_train (all 30 images, a mask per
# nucleus) supersedes monuseg2018_train_xml (13 of them, the runs before 2026-12-07's sixth
# session: --sources tnbc,monuseg2018_train_xml,cpm15); monuseg2018_train_binary is never used:
# its touching nuclei are merged (binary masks), which would teach the network to merge.
TRAIN_SOURCES = ("tnbc", "monuseg2018_train", "cpm15", "consep")
# gbm40 (brain) is left out of the default so that the union model has a source it never saw
# (scored as held out by nucseg-eval --lodo); name it in --sources to train on it.
TRAINABLE = (*TRAIN_SOURCES, "gbm40", "dsb2018_he", "monuseg2018_train_xml")
TUNE_PER_SOURCE = 6
TUNE_LAMS = (0.05, 0.1, 0.2, 0.3)
TUNE_THRESHOLDS = (0.3, 0.4, 0.5)
TNBC_MPP = 0.25  # scanned at 40x (docs/DATA.md); the PNGs store no resolution


def load_training_source(name: str, cache: Path, tnbc: Path, mpp: float) -> list[TNBCImage]:
    """One source's images as TNBCImage (patient ids prefixed by the source), at ``mpp``."""
    if name == "tnbc":
        out = []
        for im in load_tnbc(tnbc):
            rgb, labels = im.rgb, im.labels
            if abs(mpp / TNBC_MPP - 1) > 0.01:
                rgb, labels = rescale_pair(rgb, labels, TNBC_MPP, mpp)
            out.append(TNBCImage(f"tnbc/{im.patient}", f"tnbc/{im.name}", rgb, labels > 0, labels))
        return out
    return [
        TNBCImage(f"{name}/{im.patient}", f"{name}/{im.name}", im.rgb, im.labels > 0, im.labels)
        for im in load_source(cache, name, target_mpp=mpp)
    ]


def balanced(per_source: dict[str, list[TNBCImage]], weights: dict[str, float] | None = None) -> list[TNBCImage]:
    """Repeat each source's images so that every source is drawn about equally often, or in
    proportion to ``weights`` (source -> relative share, 1 when absent)."""
    weights = weights or {}
    most = max(len(v) for v in per_source.values())
    out: list[TNBCImage] = []
    for name, images in per_source.items():
        out += images * max(1, round(weights.get(name, 1.0) * most / len(images)))
    return out


def tune_on_training_images(model, per_source: dict[str, list[TNBCImage]]) -> tuple[float, float, int, float]:
    """lam, threshold, min_area and the training AJI of ``model`` (a NucleusModel), tuned on the
    training images, each once: at most TUNE_PER_SOURCE per source (evenly spaced) on a coarse
    grid, so that tuning costs minutes, not an hour, on 2 cores. The min_area candidates keep
    their size in um^2 at the model's resolution."""
    from nucseg.evaluate import DEFAULT_MIN_AREAS, tune_postprocess

    zoom = 0.25 / model.config.mpp
    tune_set = [im for v in per_source.values() for im in v[:: max(1, len(v) // TUNE_PER_SOURCE)][:TUNE_PER_SOURCE]]
    return tune_postprocess(
        model, tune_set, lams=TUNE_LAMS, thresholds=TUNE_THRESHOLDS, min_areas=tuple(int(round(a * zoom**2)) for a in DEFAULT_MIN_AREAS)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--tnbc", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sources", default=",".join(TRAIN_SOURCES),
                    help=f"comma-separated training sources (default: {','.join(TRAIN_SOURCES)}; also gbm40, and "
                         "monuseg2018_train_xml, the 13-image MoNuSeg source of earlier runs)")
    ap.add_argument("--hold-out", choices=TRAINABLE, default=None)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--init", default=None, help="a bundled model ('default': TNBC; 'multiorgan'), a model file, or 'none' (the default) for from scratch")
    ap.add_argument("--lr", type=float, default=None, help="default: 5e-4 when fine-tuning, the preset's otherwise")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16 autocast for the network's passes (2.2-2.6x faster per step on CPUs with AMX)")
    ap.add_argument("--mpp", type=float, default=0.25,
                    help="the model's resolution in um/px (0.5: 4x fewer pixels); every source is rescaled to it, "
                         "and the loss weights' sigma and the tuned min_area keep their size in um")
    ap.add_argument("--iterations", type=int, default=100_000)
    ap.add_argument("--tnbc-fold", type=int, default=None, metavar="K",
                    help="train on TNBC's patients outside fold K of nucseg-train's 3-fold split grouped by patient "
                         "(--cv kfold --folds 3, seed 0), for the union model's TNBC cross-validation; the held-out "
                         "patients are recorded in the model JSON (tnbc_held_out_patients) for nucseg-eval --patients")
    ap.add_argument("--weight", action="append", default=[], metavar="SOURCE=W",
                    help="draw SOURCE W times as often as a source without a weight (repeatable; default: all equal)")
    ap.add_argument("--arch-kwargs", type=json.loads, default=None, metavar="JSON",
                    help='the network\'s size, e.g. \'{"width": 32, "depth": 4}\' (default: the preset\'s, width 16, '
                    'depth 3); a size other than the bundled model\'s needs --init none or a model of that size')
    ap.add_argument("--augment", type=json.loads, default={},
                    help="JSON object of nucseg.data.AugmentConfig fields merged into the defaults")
    args = ap.parse_args()

    import torch

    from nucseg.inference import BUNDLED_MODELS, load_model, save_model
    from nucseg.train import preset, train

    # Both bundled models trained on every TNBC image.
    if args.init in BUNDLED_MODELS and (args.hold_out == "tnbc" or args.tnbc_fold is not None):
        raise SystemExit(f"--init {args.init} saw every TNBC image: it cannot start a run that holds TNBC images out")
    if args.tnbc_fold is not None and (args.hold_out == "tnbc" or args.tnbc_fold not in (0, 1, 2)):
        raise SystemExit("--tnbc-fold takes 0, 1 or 2, and TNBC must be among the training sources")
    chosen = [s for s in args.sources.split(",") if s]
    unknown = sorted(set(chosen) - set(TRAINABLE))
    if unknown or len(set(chosen)) != len(chosen):
        raise SystemExit(f"--sources takes distinct names among {', '.join(TRAINABLE)}; got {args.sources!r}")
    if {"monuseg2018_train", "monuseg2018_train_xml"} <= set(chosen):
        raise SystemExit("--sources: monuseg2018_train and monuseg2018_train_xml hold the same slides; pick one")
    if args.hold_out is not None and args.hold_out not in chosen:
        raise SystemExit(f"--hold-out {args.hold_out} is not among --sources {args.sources}")
    sources = [s for s in chosen if s != args.hold_out]
    if not args.mpp > 0:
        raise SystemExit(f"--mpp must be a positive resolution in um/px, got {args.mpp}")
    per_source = {s: load_training_source(s, args.cache, args.tnbc, args.mpp) for s in sources}
    tnbc_held_out: list[str] = []
    if args.tnbc_fold is not None:
        from nucseg.data import grouped_kfold

        tnbc = per_source["tnbc"]
        patients = [im.patient.split("/", 1)[1] for im in tnbc]  # TNBC's own ids, as nucseg-train splits them
        _, test = grouped_kfold(patients, 3, seed=0)[args.tnbc_fold]
        tnbc_held_out = sorted({patients[i] for i in test})
        per_source["tnbc"] = [im for im, p in zip(tnbc, patients) if p not in tnbc_held_out]
        print("TNBC fold", args.tnbc_fold, "held out:", tnbc_held_out)
    weights = {}
    for item in args.weight:
        name, _, w = item.partition("=")
        try:
            weights[name] = float(w)
        except ValueError:
            weights[name] = float("nan")  # refused below, with the same message
        if name not in per_source or not weights[name] > 0:
            raise SystemExit(f"--weight takes SOURCE=W with SOURCE among {sorted(per_source)} and W > 0, got {item!r}")
    images = balanced(per_source, weights)
    init = None
    if args.init in BUNDLED_MODELS:
        init = str(BUNDLED_MODELS[args.init])
    elif args.init and args.init.lower() != "none":
        init = args.init
    lr = args.lr if args.lr is not None else (5e-4 if init else None)
    # Sizes in pixels that stand for sizes in um scale with the resolution (preset: 0.25 um/px).
    zoom = 0.25 / args.mpp
    overrides = {"iterations": args.iterations, "time_budget_min": args.minutes, "init_weights": init,
                 "augment": args.augment, "mpp": args.mpp, "sigma": preset("default").sigma * zoom,
                 "precision": args.precision}
    if lr is not None:
        overrides["lr"] = lr
    if args.arch_kwargs is not None:
        if not isinstance(args.arch_kwargs, dict):
            raise SystemExit(f"--arch-kwargs takes a JSON object, got {args.arch_kwargs!r}")
        overrides["arch_kwargs"] = {**preset("default").arch_kwargs, **args.arch_kwargs}
        if init is not None and load_model(init, device="cpu").config.arch_kwargs != overrides["arch_kwargs"]:
            raise SystemExit(f"--init {args.init} is not of size {overrides['arch_kwargs']}: use --init none or a model of that size")
    cfg = preset("default", **overrides)
    print("sources:", {s: len(v) for s, v in per_source.items()}, "draw list:", dict(Counter(im.patient.split("/")[0] for im in images)))
    print("augment:", cfg.augment.to_dict())
    res = train(cfg, images, args.out, name="multiorgan", tune=False, threads=args.threads, progress=False)
    print(f"trained {res.iterations} steps in {res.seconds / 60:.1f} min, loss {res.final_loss:.4f}")

    unique = [im for v in per_source.values() for im in v]
    torch.set_num_threads(args.threads)
    model = load_model(res.model_path)
    lam, thr, area, score = tune_on_training_images(model, per_source)
    doc = json.loads(res.model_path.with_suffix(".json").read_text())
    extra = dict(doc.get("training", {}))
    extra.update(
        sources=sources,
        held_out_source=args.hold_out,
        tnbc_held_out_patients=tnbc_held_out,
        images_per_source={s: len(v) for s, v in per_source.items()},
        tuned_on_training_images={"lam": lam, "threshold": thr, "min_area": area, "aji": round(score, 4)},
        patients=sorted({im.patient for im in unique}),
    )
    config = dataclasses.replace(model.config, lam=lam, threshold=thr, min_area=area)
    save_model(model.net, config, res.model_path, **extra)
    print(f"tuned lam={lam} threshold={thr} min_area={area} (training AJI {score:.3f}) -> {res.model_path}")


if __name__ == "__main__":
    main()
