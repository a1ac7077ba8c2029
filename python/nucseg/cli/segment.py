"""``nucseg segment``: segment the nuclei of image files and folders (PNG, TIFF, JPEG)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXAMPLES = """\
examples:
  nucseg segment crops/ --out results/
      every PNG/TIFF/JPEG in crops/ -> results/NAME_labels.tif (uint16 labels, resolution in the tags)
  nucseg segment crops/ --out results/ --mpp 0.25 --csv --geojson --overlay
      images without resolution metadata at 0.25 um/px; also a table, QuPath GeoJSON and an outline PNG
  nucseg segment crops/ --out results/ --model multiorgan
      the second bundled model, trained on 7 organs (nucseg models lists all three)
  nucseg segment a.png b.tif --out results/ --format png
      two files, labels as 16-bit PNG
  nucseg segment slides_png/ --out results/ --recursive --resume
      sub-folders too (mirrored under results/); images already finished are skipped
  nucseg segment crops/ --out results/ --overwrite --device cpu --quiet
      replace earlier results, CPU only, no progress bar or summary
  nucseg segment crops/ --out results/ --backend openvino --precision bfloat16
      several times faster on CPUs with AMX (pip install 'nucseg[openvino]'; object F1 0.999 vs float32)

outputs per image NAME (in --out): NAME_labels.tif|png, NAME_nuclei.geojson (--geojson),
NAME_nuclei.csv (--csv) or .parquet (--parquet), NAME_overlay.png (--overlay); summary.csv
for the whole run. Resolution: --mpp, else the file's (TIFF resolution tags or OME/ImageJ
metadata, PNG pHYs); images are resampled to the model's resolution and the labels come
back on the image's own pixel grid. Whole slides (SVS, NDPI, pyramids too big for memory):
nucseg-wsi.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``segment`` subcommand to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "segment",
        help="segment image files and folders (PNG, TIFF, JPEG) into label images",
        description="Segment every nucleus of ordinary images: one label image per image (plus, optionally, "
        "a per-nucleus table, QuPath GeoJSON and an outline overlay), and a summary table.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument(
        "--mpp", type=float, default=None,
        help="microns per pixel of every image, overriding the files' own (needed when they have none)",
    )
    p.add_argument(
        "--model", default=None, metavar="WEIGHTS",
        help="weights file (.safetensors) or a bundled model: default (TNBC, breast) or multiorgan (TNBC + "
        "MoNuSeg, 7 organs; CC BY-NC-SA 4.0, non-commercial) or default+multiorgan (the two averaged, 2x the network "
        "time; same terms); default: default",
    )
    p.add_argument("--recursive", action="store_true", help="also segment the images of sub-folders")
    p.add_argument(
        "--format", dest="label_format", choices=["tif", "png"], default="tif",
        help="label image format: tif (uint16, uint32 when needed; default) or png (16 bit)",
    )
    p.add_argument("--geojson", action="store_true", help="also write NAME_nuclei.geojson (QuPath detections)")
    tables = p.add_mutually_exclusive_group()
    tables.add_argument("--csv", action="store_true", help="also write NAME_nuclei.csv: one row per nucleus")
    tables.add_argument("--parquet", action="store_true", help="the same table as NAME_nuclei.parquet")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png: the outlines on the image")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip images whose outputs all exist")
    mode.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device for the network")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="network arithmetic: auto = float16 on CUDA, float32 on the CPU (as nucseg-wsi)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx", "openvino"],
        help="what runs the network on the CPU (as nucseg-wsi): auto = onnx when installed and float32, "
        "else openvino when installed, else torch",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def run(args: argparse.Namespace) -> int:
    """Segment the images; 1 when any of them failed (each reported on its own line)."""
    from tqdm.auto import tqdm

    from nucseg.batch import segment_files, summary_lines

    def report(result: Any) -> None:
        if result.status == "failed":
            tqdm.write(f"nucseg segment: error: {result.error}", file=sys.stderr)

    results = segment_files(
        args.paths,
        args.out,
        mpp=args.mpp,
        model=args.model,
        recursive=args.recursive,
        label_format=args.label_format,
        geojson=args.geojson,
        table="csv" if args.csv else "parquet" if args.parquet else None,
        overlay=args.overlay,
        resume=args.resume,
        overwrite=args.overwrite,
        device=None if args.device == "auto" else args.device,
        precision=args.precision,
        backend=args.backend,
        progress=not args.quiet,
        on_result=report,
    )
    if not args.quiet:
        for line in summary_lines(results):
            print(line, file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0
