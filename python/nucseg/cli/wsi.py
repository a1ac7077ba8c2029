"""``nucseg-wsi``: segment every nucleus of a whole-slide image into OME-Zarr."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nucseg.cli import run_guarded

if TYPE_CHECKING:  # the CLI imports nucseg.wsi only when it runs (--help stays instant)
    from nucseg.wsi.options import RunOptions

EXAMPLES = """\
examples:
  nucseg-wsi --demo demo.zarr
      write a small synthetic H&E slide beside demo.zarr and segment it (no data needed)
  nucseg-wsi slide.svs slide.zarr
      the bundled model, tissue detection, 2048 px tiles
  nucseg-wsi slide.svs slide.zarr --model multiorgan
      the second bundled model (TNBC + MoNuSeg, 7 organs; non-commercial licence; see docs/MODEL_CARD.md)
  nucseg-wsi slide.svs slide.zarr --qc slide_qc.png --save-prob
      also a QC picture and the probability map
  nucseg-wsi slide.svs slide.zarr --geojson slide.geojson
      also every nucleus as a QuPath GeoJSON polygon with its measurements
  nucseg-wsi slide.tif slide.zarr --mpp 0.25
      a TIFF without resolution metadata: say its microns per pixel
  nucseg-wsi slide.svs slide.zarr --resume
      continue after a crash or a kill; finished tiles are not recomputed
  nucseg-wsi slide.svs slide.zarr --device cpu --precision bfloat16
      CPU only, bfloat16 arithmetic: about 2.5x faster on CPUs with AMX (Xeon 4th gen+)
  nucseg-wsi slide.svs slide.zarr --device cpu --backend onnx
      the network in ONNX Runtime (pip install 'nucseg[onnx]'; the default 'auto' picks it on CPUs)
  nucseg-wsi slide.svs slide.zarr --model hematoxylin --tissue mask.png
      the classical colour-deconvolution baseline, with your own tissue mask
  nucseg-wsi slides/*.svs --out-dir results/
      a batch, one results/NAME.zarr per slide; complete ones are skipped, --resume continues partial ones
  nucseg-wsi slides/*.svs --out-dir results/ --workers 4
      the batch on a local Dask cluster of 4 worker processes (its dashboard address is printed)
  nucseg-wsi /shared/slides/*.svs --out-dir /shared/results --scheduler tcp://head:8786
      the batch on a running Dask cluster: slides and results on a filesystem every worker reaches
  nucseg-wsi /shared/slides/*.svs --out-dir s3://bucket/results --scheduler tcp://head:8786 --qc qc/
      the stores on an object store (any URL fsspec knows; s3:// needs s3fs), QC pictures in qc/

output (OME-NGFF 0.5, zarr v3): 0.. (slide overview pyramid), labels/nuclei/0.. (labels +
pyramid), prob/0 (--save-prob), nucseg/nuclei.parquet (one row per nucleus: position, area,
shape, stain densities), run metadata in the root attributes.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no heavy imports)."""
    p = argparse.ArgumentParser(
        prog="nucseg-wsi",
        description="Segment every nucleus of a whole-slide image into an OME-Zarr store.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="*", metavar="SLIDE OUT.zarr", help="the slide and the output store (with --out-dir: slides)"
    )
    p.add_argument(
        "--out-dir", default=None, metavar="DIR", help="batch: every path is a slide, written to DIR/NAME.zarr"
    )
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler", default=None, metavar="tcp://HOST:8786", help="run on this Dask cluster (see docs/SCALING.md)"
    )
    cluster.add_argument("--workers", type=int, default=None, metavar="N", help="start a local Dask cluster of N workers")
    p.add_argument("--group", type=int, default=2, help="with Dask: a task computes GROUP x GROUP tiles (default 2)")
    p.add_argument("--demo", action="store_true", help="write a synthetic slide beside OUT.zarr and segment it")
    p.add_argument(
        "--model",
        default=None,
        help="weights file, a bundled model ('default': TNBC, breast; 'multiorgan': TNBC + MoNuSeg, 7 organs, "
        "CC BY-NC-SA 4.0, non-commercial; 'default+multiorgan': the two averaged, 2x the network time, same terms), "
        "'hematoxylin' (classical baseline) or module:factory; default: 'default'",
    )
    p.add_argument("--lam", type=float, default=None, help="watershed dynamics (default: the model's)")
    p.add_argument("--threshold", type=float, default=None, help="foreground threshold (default: the model's)")
    p.add_argument(
        "--min-area", type=int, default=None, metavar="PX",
        help="drop nuclei under PX pixels at the processing resolution (default: the model's, 60 for the bundled one)",
    )
    p.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel, overriding the slide's")
    p.add_argument("--level", type=int, default=None, help="pyramid level to read (default: closest to the model)")
    p.add_argument("--tile", type=int, default=2048, help="tile core size in processing pixels (default 2048)")
    p.add_argument("--halo", type=int, default=None, help="pixels read around each tile (default: context + 96)")
    p.add_argument(
        "--max-halo", type=int, default=None, help="largest halo a tile is retried with for big clusters (default 512)"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail when a cluster does not fit the largest halo (default: keep it, flagged approximate)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device for the network")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="network arithmetic: auto = float16 on CUDA, float32 on the CPU; bfloat16 is ~2.5x faster "
        "on CPUs with AMX (object F1 >= 0.996 against float32)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx", "openvino"],
        help="what runs the network: onnx = ONNX Runtime on the CPU (pip install 'nucseg[onnx]'), openvino = "
        "OpenVINO on the CPU (pip install 'nucseg[openvino]'; with --precision bfloat16 several times faster on "
        "CPUs with AMX), both faster than torch there; auto (default) = on the CPU onnx when installed and "
        "float32, else openvino when installed, else torch",
    )
    p.add_argument(
        "--reader",
        default="auto",
        choices=["auto", "openslide", "tifffile"],
        help="what decodes the slide: auto (default) = tifffile for SVS and TIFF, where it gives OpenSlide's "
        "pixels 5-7x faster on JPEG (needs imagecodecs: pip install 'nucseg[fast-read]'), OpenSlide for other formats",
    )
    p.add_argument("--batch-size", type=int, default=1, help="tiles per inference batch (default 1)")
    p.add_argument(
        "--threads", type=int, default=None,
        help="post-processing threads (default: the CPUs this process may use: affinity and container quota)",
    )
    p.add_argument("--tissue", default="auto", help="'auto' (default), 'none' or a mask image (non-zero = tissue); nuclei are segmented within "
                        "the object margin (halo - context px) of tissue, and glass is not fed to the network")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT.zarr")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing OUT.zarr")
    p.add_argument("--save-prob", action="store_true", help="also store the probability map (uint8)")
    p.add_argument(
        "--save-image",
        action="store_true",
        help="store the RGB at the processing resolution as the NGFF image (default: a slide overview)",
    )
    p.add_argument(
        "--qc",
        default=None,
        metavar="QC.png",
        help="write a QC picture (outlines + density); with --out-dir a folder receiving NAME_qc.png per slide",
    )
    p.add_argument(
        "--geojson",
        default=None,
        metavar="FILE",
        help="after the run, write every nucleus to FILE as QuPath GeoJSON (checked before the run; "
        "--overwrite replaces it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out_dir is not None:
        if args.demo or not args.paths:
            parser.error("--out-dir takes one or more SLIDE paths (and no --demo)")
    elif args.demo:
        if len(args.paths) != 1:
            parser.error("--demo takes exactly one path: OUT.zarr")
    elif len(args.paths) != 2:
        parser.error("expected SLIDE and OUT.zarr (or --demo OUT.zarr, or SLIDE... --out-dir DIR)")
    if args.out_dir is not None and args.geojson:
        parser.error("--geojson works for one slide, not with --out-dir (export each store with nucseg export)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    return run_guarded(
        _run,
        args,
        prog="nucseg-wsi",
        errors=(OSError, ValueError, TypeError, RuntimeError, ImportError),
        status=1,
        interrupted="nucseg-wsi: interrupted; finished tiles are kept, continue with --resume",
    )


def _run(args: argparse.Namespace) -> int:
    from nucseg.wsi.location import Location, is_url
    from nucseg.wsi.pipeline import segment_slide, summary_lines

    model = args.model
    if args.backend in ("onnx", "openvino"):  # the missing extra is named before any slide is read
        from nucseg.backends import require_onnxruntime, require_openvino

        (require_onnxruntime if args.backend == "onnx" else require_openvino)()
    if args.demo:
        if is_url(args.paths[0]):
            raise ValueError(f"--demo writes its slide beside OUT.zarr: give a local path, not {args.paths[0]}")
        out = Path(args.paths[0])
        slide = out.with_name(out.name.removesuffix(".zarr") + "_slide.tif")
        if not slide.exists():
            from nucseg.wsi.demo import write_demo_slide

            if not args.quiet:
                print(f"writing synthetic slide {slide}", file=sys.stderr)
            write_demo_slide(slide, (2048, 2048))
        if model is None and not _default_weights_exist():
            model = "hematoxylin"
            if not args.quiet:
                print("bundled weights not found: using the classical hematoxylin model", file=sys.stderr)
    elif args.out_dir is None:
        slide, out = Path(args.paths[0]), Location.of(args.paths[1]).public  # a URL stays a URL
    if args.out_dir is not None:
        if args.scheduler is not None or args.workers is not None:
            return _run_dask(args, model, args.paths, args.out_dir)
        return _run_batch(args, model)
    if args.geojson is not None:  # before hours of work, not after
        if not isinstance(out, Path):
            raise ValueError(f"--geojson reads a local store; {out} is a URL (copy the store, then nucseg export)")
        _check_geojson(Path(args.geojson), overwrite=args.overwrite, resume=args.resume)
    if args.scheduler is not None or args.workers is not None:
        status = _run_dask(args, model, [slide], out)
    else:
        summary = segment_slide(
            slide, out, model=model, threads=args.threads, qc=args.qc, progress=not args.quiet, options=_options(args)
        )
        if not args.quiet:
            for line in summary_lines(summary):
                print(line, file=sys.stderr)
        status = 0
    if status == 0 and args.geojson is not None:
        _write_geojson(out, Path(args.geojson), overwrite=args.overwrite, quiet=args.quiet)
    return status


def _check_geojson(path: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a --geojson destination that cannot be written, before the run."""
    from nucseg.export.result import check_destination

    if resume and path.exists() and not path.is_dir():
        raise ValueError(
            f"--geojson destination {path} already exists; remove it or choose another file "
            "(--overwrite cannot be combined with --resume)"
        )
    check_destination(path, overwrite=overwrite)


def _write_geojson(out: Path, path: Path, *, overwrite: bool, quiet: bool) -> None:
    from nucseg.export import write_geojson

    stats = write_geojson(out, path, overwrite=overwrite, progress=not quiet)
    if not quiet:
        print(f"geojson: {stats.features} nuclei -> {path}", file=sys.stderr)


def _options(args: argparse.Namespace) -> RunOptions:
    """The run's options from the flags, validated once for every mode and slide."""
    from nucseg.wsi.options import RunOptions

    return RunOptions(
        lam=args.lam,
        threshold=args.threshold,
        min_area=args.min_area,
        mpp=args.mpp,
        level=args.level,
        tile=args.tile,
        halo=args.halo,
        max_halo=args.max_halo,
        strict=args.strict,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        reader=args.reader,
        batch_size=args.batch_size,
        tissue=args.tissue,
        resume=args.resume,
        overwrite=args.overwrite,
        save_prob=args.save_prob,
        save_image=args.save_image,
    )


def _run_dask(args: argparse.Namespace, model: str | None, slides: list, out: str | Path) -> int:
    from nucseg.wsi.distributed import outcome_lines, run_distributed

    # After importing dask.distributed (its import sets its loggers): its INFO lines drown the bar.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    outcomes = run_distributed(
        slides,
        out,
        scheduler=args.scheduler,
        workers=args.workers,
        group=args.group,
        model=model,
        errors="collect" if args.out_dir is not None else "raise",
        qc=args.qc,
        progress=not args.quiet,
        options=_options(args),
    )
    failed = [o for o in outcomes if o.status == "failed"]
    for line in outcome_lines(outcomes) if not args.quiet else [f"{o.slide}: {o.error}" for o in failed]:
        print(line, file=sys.stderr)
    return 1 if failed else 0


def _run_batch(args: argparse.Namespace, model: str | None) -> int:
    """One slide after the other in this process; complete stores are skipped."""
    from dataclasses import replace

    from nucseg.wsi.distributed import plan_outputs, qc_path, store_status
    from nucseg.wsi.location import Location
    from nucseg.wsi.pipeline import segment_slide, summary_lines

    options = _options(args)  # invalid flags: one error before any slide
    if args.qc is not None:
        Path(args.qc).mkdir(parents=True, exist_ok=True)
    failed = 0
    for slide, out in plan_outputs(args.paths, args.out_dir):
        status = store_status(out)
        if status == "complete" and not args.overwrite:
            if not args.quiet:
                print(f"{slide.name}: {out} is complete, skipped", file=sys.stderr)
            continue
        Location.of(args.out_dir).makedirs()
        try:
            summary = segment_slide(
                slide, out, model=model, threads=args.threads, progress=not args.quiet,
                qc=None if args.qc is None else qc_path(slide, args.qc),
                options=replace(options, resume=args.resume and status == "partial"),
            )
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            print(f"nucseg-wsi: {slide.name}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if not args.quiet:
            for line in [f"{slide.name}:", *summary_lines(summary)]:
                print(line, file=sys.stderr)
    return 1 if failed else 0


def _default_weights_exist() -> bool:
    import nucseg

    return (Path(nucseg.__file__).parent / "models" / "weights" / "default.safetensors").is_file()


if __name__ == "__main__":
    sys.exit(main())
