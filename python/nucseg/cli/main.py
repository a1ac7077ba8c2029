"""``nucseg``: segment images (``segment``), list the bundled models (``models``) and work with the
output of ``nucseg-wsi`` (``export``, ``report``)."""

from __future__ import annotations

import argparse
import sys

from nucseg.cli import run_guarded

EXAMPLES = """\
examples:
  nucseg segment crops/ --out results/ --csv --geojson
      every PNG/TIFF/JPEG in crops/ -> label images, tables, QuPath GeoJSON (nucseg segment --help)
  nucseg export slide.zarr --geojson nuclei.geojson
      every nucleus as a QuPath detection (File > Import objects from file in QuPath)
  nucseg export slide.zarr --geojson nuclei.geojson --simplify 0.5 --class Nucleus
      simplified outlines (tolerance in level-0 pixels), all nuclei in class "Nucleus"
  nucseg report slide.zarr slide_report.html
      one self-contained HTML page: QC overlay, density map, histograms, run metadata
  nucseg models
      the bundled models (--model NAME): training data, licence of the weights, recipe

OUT.zarr must be a finished nucseg-wsi output; a half-finished one is finished with
  nucseg-wsi SLIDE OUT.zarr --resume
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no heavy imports)."""
    p = argparse.ArgumentParser(
        prog="nucseg",
        description="Segment images, and export and report the output of nucseg-wsi.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from nucseg.cli import segment  # argparse only: no heavy imports

    segment.add_parser(sub)

    ex = sub.add_parser(
        "export",
        help="write the nuclei as QuPath-compatible GeoJSON",
        description="Write every nucleus as a GeoJSON Polygon (QuPath detection) in slide level-0 pixels, "
        "with the per-nucleus measurements of the table.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("store", metavar="OUT.zarr", help="a finished nucseg-wsi output")
    ex.add_argument("--geojson", required=True, metavar="FILE", help="GeoJSON file to write")
    ex.add_argument(
        "--simplify", type=float, default=0.0, metavar="PX",
        help="simplify outlines with this tolerance in level-0 pixels (default 0: exact pixel outlines)",
    )
    ex.add_argument("--class", dest="classification", default=None, metavar="NAME",
                    help="QuPath class name for every nucleus (default: none)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing file")
    ex.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    rep = sub.add_parser(
        "report",
        help="write a self-contained HTML report",
        description="One HTML page with embedded pictures: QC overlay, nuclei density, histograms of area and "
        "hematoxylin density, and the run metadata.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("store", metavar="OUT.zarr", help="a finished nucseg-wsi output")
    rep.add_argument("html", metavar="REPORT.html", help="HTML file to write")
    rep.add_argument("--bin-um", type=float, default=None,
                     help="side of the density bins in micrometres (default 100, finer on small slides)")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing file")
    rep.add_argument("--quiet", action="store_true", help="no summary")

    sub.add_parser(
        "models",
        help="list the bundled models, their training data and licences",
        description="The models shipped with nucseg, usable by name (--model NAME, nucseg.load_model(NAME)): "
        "what each was trained on, the terms its weights carry, its resolution and post-processing recipe. "
        "docs/MODEL_CARD.md has their accuracy per source.",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 on success)."""
    from nucseg.cli import segment

    args = build_parser().parse_args(argv)
    commands = {"export": _export, "report": _report, "segment": segment.run, "models": _models}
    interrupted = (
        "nucseg segment: interrupted; finished images are kept, continue with --resume"
        if args.command == "segment"
        else "nucseg: interrupted; nothing was written"
    )
    return run_guarded(
        commands[args.command],
        args,
        prog=f"nucseg {args.command}",
        errors=(OSError, ValueError, TypeError, RuntimeError, ImportError),
        status=1,
        interrupted=interrupted,
    )


def _export(args: argparse.Namespace) -> int:
    from nucseg.export import write_geojson

    s = write_geojson(
        args.store,
        args.geojson,
        simplify=args.simplify,
        classification=args.classification,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if not args.quiet:
        extra = f" ({s.multipart} as MultiPolygon)" if s.multipart else ""
        missing = f"; {s.missing} table rows without pixels skipped" if s.missing else ""
        print(f"wrote {s.features} nuclei{extra} to {s.path}{missing}", file=sys.stderr)
    return 0


def _models(args: argparse.Namespace) -> int:  # noqa: ARG001
    import json

    from nucseg.inference import BUNDLED_MODELS

    for name, path in BUNDLED_MODELS.items():
        doc = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        cfg, licence = doc["config"], doc["licence"]
        print(f"{name}{' (used when no model is given)' if name == 'default' else ''}")
        print(f"  trained on: {', '.join(d.split(': ', 1)[0] for d in licence['data'])}")
        members = doc.get("training", {}).get("ensemble_of")
        if members:
            print(f"  ensemble of: {', '.join(m['name'] for m in members)} (the mean of their outputs; "
                  f"{len(members)}x the network time)")
        print(f"  licence of the weights: {licence['spdx']}: {licence['terms']}")
        print(f"  resolution {cfg['mpp']:g} um/px; lam {cfg['lam']:g}, threshold {cfg['threshold']:g}, "
              f"min_area {cfg.get('min_area', 0)} px; sha256 {doc['sha256'][:12]}...")
    return 0


def _report(args: argparse.Namespace) -> int:
    from nucseg.export import write_report

    path = write_report(args.store, args.html, overwrite=args.overwrite, bin_um=args.bin_um)
    if not args.quiet:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
