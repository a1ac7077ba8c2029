"""Fault injection and input safety of the whole-slide runner (issue 7, docs/RELIABILITY.md).

* kill -9 at random points, then ``--resume``: the store equals an uninterrupted run
  (a CI-sized run of ``scripts/kill_resume_campaign.py``);
* tiles that fail to decode in the middle of a slide, for good or transiently;
* an output directory that becomes read-only mid-run (simulated: the test runs as root,
  which chmod does not stop, so every write under the store raises PermissionError once
  the switch is thrown);
* slide metadata with absurd dimensions or resolution, rejected before pixels are read;
* output paths never derived from slide metadata;
* model files: safetensors only, ``weights_only=True`` for .pth, pickles refused unrun.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr

import nucseg
from nucseg.wsi import SlideError, StoreError, segment_slide
from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(nucseg.__file__).resolve().parent
RUN = {"model": "hematoxylin", "tile": 128, "halo": 64, "tissue": "none", "threads": 1, "save_prob": True}


def _campaign_module():
    """``scripts/kill_resume_campaign.py`` as a module (registered: it defines dataclasses)."""
    import sys

    if "kill_resume_campaign" in sys.modules:
        return sys.modules["kill_resume_campaign"]
    spec = importlib.util.spec_from_file_location("kill_resume_campaign", ROOT / "scripts" / "kill_resume_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 384 x 512 synthetic H&E slide at 0.25 um/px: 12 tiles of 128 px."""
    rgb, _, _ = synthetic_he((384, 512), seed=11, tissue_fraction=1.0)
    return write_pyramid_tiff(tmp_path_factory.mktemp("rel") / "slide.tif", rgb, mpp=0.25, levels=2)


@pytest.fixture(scope="module")
def reference(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run of ``slide``."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    segment_slide(slide, out, **RUN)
    return out


def _status(out: Path) -> str:
    return zarr.open_group(str(out), mode="r").attrs["nucseg"]["status"]


def _records(out: Path) -> set[int]:
    return {int(p.stem) for p in (out / "nucseg" / "tiles").glob("*.json")}


def _core_box(out: Path, index: int) -> tuple[slice, slice]:
    meta = zarr.open_group(str(out), mode="r").attrs["nucseg"]
    tile, (h, w) = meta["settings"]["tile"], meta["settings"]["size"]
    cols = -(-w // tile)
    r, c = divmod(index, cols)
    return slice(r * tile, min(h, (r + 1) * tile)), slice(c * tile, min(w, (c + 1) * tile))


# ---------------------------------------------------------------- kill -9 and resume


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_the_clean_run(tmp_path: Path) -> None:
    campaign = _campaign_module()
    figures = campaign.run_campaign(5, seed=2026, folder=tmp_path, progress=False, snapshot=False)
    failed = [r for r in figures["results"] if not r["equal"]]
    assert figures["all_equal"], f"resumed stores differ from the clean run: {failed}"
    assert figures["runs"] == 5
    # Stratified kill times: most land while tiles are being computed and written.
    assert figures["mid_tile_kills"] >= 1, figures["phases"]


def test_campaign_compare_detects_a_single_changed_label(reference: Path, tmp_path: Path) -> None:
    """The campaign's equality check is not vacuous: one pixel or one table row differs -> reported."""
    import shutil

    campaign = _campaign_module()
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    assert campaign.compare(reference, copy) == []
    arr = zarr.open_array(str(copy / "labels" / "nuclei" / "0"), mode="r+")
    y, x = np.argwhere(arr[...] > 0)[0]
    arr[y, x] = 0
    assert campaign.compare(reference, copy) == ["labels/nuclei/0"]


_KILL_DURING_CREATE = """
import os, signal, sys
import zarr
from nucseg.wsi import segment_slide

def die(*args, **kwargs):  # the first sub-group is made right after the store's folder
    os.kill(os.getpid(), signal.SIGKILL)

zarr.Group.create_group = die
segment_slide(sys.argv[1], sys.argv[2], model="hematoxylin", tile=128, halo=64, tissue="none", threads=1,
              save_prob=True)
"""


def test_kill_during_store_creation_is_resumable(slide: Path, reference: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "o.zarr"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _KILL_DURING_CREATE, str(slide), str(out)], env=env, timeout=120)
    assert done.returncode == -9 and out.is_dir()  # killed, leaving a half-made store
    segment_slide(slide, out, resume=True, **RUN)
    assert _open_campaign_compare(reference, out) == []


@pytest.mark.parametrize("how", ["resume", "overwrite", "partial-only"])
def test_half_created_store_is_redone_by_resume_or_overwrite_and_refused_by_a_plain_run(
    slide: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """In-process variant of the kill above (an exception where the kill landed), plus a
    folder holding only zarr's temporary file (killed before the first ``zarr.json``)."""
    from nucseg.wsi.store import is_unfinished_creation

    out = tmp_path / "o.zarr"
    if how == "partial-only":
        out.mkdir()
        (out / "zarr.81f0.partial").write_bytes(b'{"zarr_form')
    else:
        real = zarr.Group.create_group

        def die(self, *a, **k):  # noqa: ANN001, ANN202
            raise KeyboardInterrupt

        monkeypatch.setattr(zarr.Group, "create_group", die)
        with pytest.raises(KeyboardInterrupt):
            segment_slide(slide, out, **RUN)
        monkeypatch.setattr(zarr.Group, "create_group", real)
        assert _status(out) == "creating"
    assert is_unfinished_creation(out)
    with pytest.raises(StoreError, match="already exists"):
        segment_slide(slide, out, **RUN)
    mode = {"overwrite": True} if how == "overwrite" else {"resume": True}
    s = segment_slide(slide, out, **mode, **RUN)
    assert s.tiles_run == 12 and s.tiles_resumed == 0
    assert not is_unfinished_creation(out)
    assert _open_campaign_compare(reference, out) == []


def test_a_folder_that_is_not_a_store_is_still_refused(slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for mode in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(StoreError, match="not an output of nucseg-wsi"):
            segment_slide(slide, out, **mode, **RUN)
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- decode failures


def test_tile_failing_to_decode_mid_slide_keeps_finished_tiles_and_names_the_region(tmp_path: Path) -> None:
    import tifffile

    # Larger than the 2048 px overview (read from level 1), so only the level-0 tile reads
    # touch the corrupt TIFF tile, which sits in the middle of the slide.
    rgb = np.full((2304, 2304, 3), (232, 160, 196), np.uint8)
    path = write_pyramid_tiff(tmp_path / "mid.tif", rgb, mpp=0.25, levels=2, tile=256)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // 256)
        i = 4 * per_row + 4  # TIFF tile (4, 4): pixels 1024..1280, the middle
        offset, count = page.dataoffsets[i], page.databytecounts[i]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))
    out = tmp_path / "o.zarr"
    args = {"model": "hematoxylin", "tile": 768, "halo": 64, "tissue": "none", "threads": 1}
    with pytest.raises(SlideError) as exc:
        segment_slide(path, out, **args)
    msg = str(exc.value)
    # The slide, the level-0 region and the runner's tile (the centre one of 3x3) are named.
    assert "mid.tif" in msg and "region" in msg and "tile 4" in msg
    done = _records(out)
    assert _status(out) == "running" and done and 4 not in done
    # Resuming on the still-broken slide fails the same way and loses nothing.
    with pytest.raises(SlideError, match="tile 4"):
        segment_slide(path, out, resume=True, **args)
    assert _records(out) >= done and _status(out) == "running"


def test_transient_decode_failure_is_resumable_and_exact(
    slide: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nucseg.wsi.reader import TiffReader

    real = TiffReader._read

    def flaky(self, level, x, y, w, h):  # noqa: ANN001, ANN202
        # Tile reads (reader threads, not the overview) touching the middle of the slide fail.
        if threading.current_thread().name.startswith("nucseg-read") and x <= 256 < x + w and y <= 192 < y + h:
            raise OSError("JPEG decoder: corrupt data")
        return real(self, level, x, y, w, h)

    monkeypatch.setattr(TiffReader, "_read", flaky)
    out = tmp_path / "o.zarr"
    with pytest.raises(SlideError, match=r"slide\.tif.*cannot read level 0 region.*corrupt data.*tile \d+"):
        segment_slide(slide, out, **RUN)
    done = _records(out)
    assert _status(out) == "running" and 0 < len(done) < 12
    ref_labels = zarr.open_array(str(reference / "labels" / "nuclei" / "0"), mode="r")[...]
    got = zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]
    for t in done:  # every finished tile is already final (owned nuclei never cross cores)
        box = _core_box(out, t)
        np.testing.assert_array_equal(got[box], ref_labels[box], err_msg=f"tile {t}")
    monkeypatch.setattr(TiffReader, "_read", real)
    s = segment_slide(slide, out, resume=True, **RUN)
    assert s.tiles_resumed == len(done) and s.tiles_run == 12 - len(done)
    assert _open_campaign_compare(reference, out) == []


def _open_campaign_compare(ref: Path, out: Path) -> list[str]:
    return _campaign_module().compare(ref, out)


# ---------------------------------------------------------------- read-only output


class ReadOnlySwitch:
    """Makes every write under ``root`` raise PermissionError once ``on`` is set.

    Covers the three ways the store writes: zarr chunks and metadata (``_put``), the
    atomic renames of records and table parts (``os.replace``) and ``Path.write_text``.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import zarr.storage._local as local

        self.root = str(root)
        self.on = False
        self.refused = 0
        real_put, real_replace, real_write_text = local._put, os.replace, Path.write_text

        def put(path, value, *a, **k):  # noqa: ANN001, ANN202
            self.check(path)
            return real_put(path, value, *a, **k)

        def replace(src, dst, *a, **k):  # noqa: ANN001, ANN202
            self.check(dst)
            return real_replace(src, dst, *a, **k)

        def write_text(path, *a, **k):  # noqa: ANN001, ANN202
            self.check(path)
            return real_write_text(path, *a, **k)

        monkeypatch.setattr(local, "_put", put)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(Path, "write_text", write_text)

    def check(self, path: object) -> None:
        if self.on and os.fspath(path).startswith(self.root):
            self.refused += 1
            raise PermissionError(13, "Permission denied", os.fspath(path))


@pytest.mark.parametrize("after", [3, 12], ids=["mid-tiles", "at-finish"])
def test_output_becoming_read_only_mid_run_is_one_clear_error_and_resumable(
    slide: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    from nucseg.wsi.store import OutputStore

    out = tmp_path / "o.zarr"
    switch = ReadOnlySwitch(out, monkeypatch)
    real = OutputStore.write_tile

    def counting(self, *a, **k):  # noqa: ANN001, ANN202
        real(self, *a, **k)
        if len(_records(out)) >= after:  # the directory turns read-only here
            switch.on = True

    monkeypatch.setattr(OutputStore, "write_tile", counting)
    with pytest.raises((StoreError, PermissionError)) as exc:
        segment_slide(slide, out, **RUN)
    assert switch.refused >= 1
    msg = str(exc.value)
    assert "Permission denied" in msg and str(out) in msg, msg  # names what failed, and where
    if isinstance(exc.value, StoreError) and after < 12:
        assert "--resume" in msg
    switch.on = False
    assert len(_records(out)) == after  # the finished tiles are kept
    assert _status(out) == "running"  # never marked complete
    monkeypatch.setattr(OutputStore, "write_tile", real)
    s = segment_slide(slide, out, resume=True, **RUN)
    assert s.tiles_resumed == after and s.tiles_run == 12 - after
    assert _open_campaign_compare(reference, out) == []


def test_read_only_at_finish_is_a_store_error_with_the_resume_hint(
    slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nucseg.wsi.store import OutputStore

    out = tmp_path / "o.zarr"
    switch = ReadOnlySwitch(out, monkeypatch)
    real = OutputStore.finish

    def finish(self, *a, **k):  # noqa: ANN001, ANN202
        switch.on = True
        return real(self, *a, **k)

    monkeypatch.setattr(OutputStore, "finish", finish)
    with pytest.raises(StoreError, match="Permission denied.*--resume"):
        segment_slide(slide, out, **RUN)


def test_dask_finish_steps_turn_write_errors_into_store_errors(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dask runner's spill merge, pyramid blocks and finish task (run here directly)."""
    import shutil
    from types import SimpleNamespace

    from nucseg.wsi.distributed import build_pyramid_blocks, finish_slide, merge_spill
    from nucseg.wsi.store import save_spill

    out = tmp_path / "copy.zarr"
    shutil.copytree(reference, out)
    save_spill(out, 0, 1, np.array([[0, 0]]), np.array([5], np.uint32))
    switch = ReadOnlySwitch(out, monkeypatch)
    switch.on = True
    hint = rf"cannot finish {out}: .*Permission denied.*nothing finished is lost, rerun with --resume"
    with pytest.raises(StoreError, match=hint):
        merge_spill(str(out), [0], 12)
    with pytest.raises(StoreError, match=hint):
        build_pyramid_blocks(str(out), 1, [(0, 64, 0, 64)])
    with pytest.raises(StoreError, match=hint):
        finish_slide(SimpleNamespace(output=str(out)), {}, 0.0)
    assert switch.refused >= 3


# ---------------------------------------------------------------- absurd slide metadata


def _tiff_claiming(path: Path, width: int, height: int, resolution: tuple[float, float] = (40000, 40000)) -> Path:
    """A 64 x 64 tiled RGB TIFF whose header claims ``width`` x ``height`` pixels
    (``resolution`` in pixels per cm: 40000 is 0.25 um/px)."""
    import tifffile

    rgb = np.full((64, 64, 3), 200, np.uint8)
    tifffile.imwrite(path, rgb, tile=(16, 16), resolution=resolution, resolutionunit=3, photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return path


@pytest.fixture
def no_pixel_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel read fails loudly: validation must happen before the first one."""
    from nucseg.wsi.reader import SlideReader

    def refuse(self, *a, **k):  # noqa: ANN001, ANN202
        raise AssertionError(f"pixels of {self.path} were read before its metadata was validated")

    monkeypatch.setattr(SlideReader, "read", refuse)


@pytest.mark.parametrize(
    ("width", "height", "tile", "match"),
    [
        (2**32 - 1, 64, 1024, "invalid size 4294967295x64"),  # beyond any level side
        # 4e12 tiles of 1024 px, but first 536,871 mm wide: the physical check comes first
        (2**31 - 1, 2**31 - 1, 1024, r"2147483647x2147483647 px .* = 536870\.9x536870\.9 mm, .* 200 mm limit"),
        # 200 mm (the limit) at 0.25 um/px in tiles of 16 px: 2.5e9 tiles
        (800_000, 800_000, 16, "2500000000 tiles; check the slide's mpp"),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.usefixtures("no_pixel_reads")
def test_absurd_dimensions_are_rejected_before_allocation(
    tmp_path: Path, width: int, height: int, tile: int, match: str
) -> None:
    path = _tiff_claiming(tmp_path / "absurd.tif", width, height)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            segment_slide(path, tmp_path / "o.zarr", model="hematoxylin", tile=tile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # nothing sized by the claimed dimensions
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.usefixtures("no_pixel_reads")
def test_physically_impossible_slide_is_rejected_before_reading(tmp_path: Path) -> None:
    path = _tiff_claiming(tmp_path / "huge.tif", 1_000_000, 1_000_000)
    with pytest.raises(ValueError, match="mm"):
        segment_slide(path, tmp_path / "o.zarr", model="hematoxylin", tile=4096)
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    ("resolution", "field"),
    [((1e9, 1e9), "XResolution"), ((1.0, 1.0), "XResolution"), ((40000, 4), "YResolution")],
    ids=["0.00001-um", "10000-um", "anisotropic-2500-um"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.usefixtures("no_pixel_reads")
def test_absurd_resolution_metadata_is_rejected(tmp_path: Path, resolution: tuple[float, float], field: str) -> None:
    path = _tiff_claiming(tmp_path / "res.tif", 64, 64, resolution)
    with pytest.raises(SlideError, match=f"TIFF {field}.*microns per pixel.*--mpp"):
        segment_slide(path, tmp_path / "o.zarr", model="hematoxylin")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("mpp", [0.0, -0.25, float("nan"), float("inf"), 1e9, 1e-9, "abc"])
@pytest.mark.usefixtures("no_pixel_reads")
def test_absurd_mpp_argument_is_rejected(slide: Path, tmp_path: Path, mpp: object) -> None:
    with pytest.raises(ValueError, match="mpp"):
        segment_slide(slide, tmp_path / "o.zarr", model="hematoxylin", mpp=mpp)
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------- output paths


def test_output_paths_never_come_from_slide_metadata(tmp_path: Path) -> None:
    import tifffile

    from nucseg.wsi.distributed import plan_outputs

    work = tmp_path / "work"
    (work / "slides").mkdir(parents=True)
    rgb, _, _ = synthetic_he((256, 256), seed=5, tissue_fraction=1.0)
    path = work / "slides" / "case 01.tif"
    # Every text field a reader could take a name from points somewhere else.
    evil = "../../../escaped.zarr"
    tifffile.imwrite(
        path, rgb, photometric="rgb", tile=(128, 128), resolution=(40000, 40000), resolutionunit=3,
        description=evil, software=evil, metadata=None, extratags=[(269, "s", 0, evil, True)],  # DocumentName
    )
    before = {p for p in tmp_path.rglob("*")}
    cwd_before = set(os.listdir(os.getcwd()))
    out = work / "out" / "given.zarr"
    out.parent.mkdir()
    segment_slide(path, out, model="hematoxylin", tile=128, tissue="none")
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out.parent / "given.zarr" or out in p.parents for p in created - {out.parent})
    for base in (out, out.parent, path.parent, Path.cwd()):
        assert not (base / evil).resolve().exists()
    assert set(os.listdir(os.getcwd())) == cwd_before
    meta = json.loads((out / "zarr.json").read_text())["attributes"]["nucseg"]
    assert meta["slide"]["path"] == str(path.resolve())
    # Batch mode: the store is named after the slide's file name, inside the output folder.
    pairs = plan_outputs([path], work / "batch")
    assert pairs == [(path.resolve(), (work / "batch" / "case 01.zarr").resolve())]


# ---------------------------------------------------------------- model files


class _Payload:
    """Pickling this runs ``open(marker, 'w')`` at load time: what a malicious file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def _pickle_bomb(path: Path, marker: Path) -> Path:
    """A torch-style pickle whose unpickling would create ``marker``."""
    import torch

    torch.save({"features.0.weight": _Payload(marker)}, path)
    return path


def test_pickled_model_files_are_refused_without_running_them(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from nucseg.inference import load_model
    from nucseg.wsi.predictors import resolve_model

    marker = tmp_path / "pwned"
    # The unpickling really would run code (the test is not vacuous) ...
    with open(_pickle_bomb(tmp_path / "probe.pt", marker), "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # ... but nucseg never unpickles: .pt/.pth/.pkl model paths are refused by name,
    for name in ("model.pt", "model.pth", "model.pkl"):
        bomb = _pickle_bomb(tmp_path / name, marker)
        with pytest.raises(ValueError, match=r"\.safetensors"):
            load_model(bomb)
        with pytest.raises(ValueError, match=r"\.safetensors"):
            resolve_model(str(bomb))
    # a pickle renamed .safetensors (with a JSON beside it, checksum matching) fails in safetensors,
    disguised = _pickle_bomb(tmp_path / "model.safetensors", marker)
    import hashlib

    digest = hashlib.sha256(disguised.read_bytes()).hexdigest()
    config = json.loads((PACKAGE / "models" / "weights" / "default.json").read_text())["config"]
    (tmp_path / "model.json").write_text(json.dumps({"config": config, "sha256": digest}))
    with pytest.raises(Exception) as exc:  # noqa: PT011 - any refusal will do, as long as nothing ran
        load_model(disguised)
    assert not isinstance(exc.value, AssertionError)
    # and the VGG encoder's .pth path goes through torch.load(weights_only=True).
    from nucseg.models.vgg import load_vgg16_encoder, vgg16_stages

    with pytest.raises(ValueError, match="weights_only"):
        load_vgg16_encoder(vgg16_stages(), _pickle_bomb(tmp_path / "vgg16.pth", marker))
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            out.append((f"{base}.{name}" if base else name, node))
    return out


def test_no_code_path_unpickles() -> None:
    """Source scan of the package: torch.load only with weights_only=True; no pickle.load(s),
    no np.load with allow_pickle, no joblib/dill/torch.jit.load."""
    offenders = []
    for py in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(py.read_text(), filename=str(py))
        for name, call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            where = f"{py.relative_to(PACKAGE)}:{call.lineno} {name}"
            if name == "torch.load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    offenders.append(where)
            elif name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "jit.load", "cloudpickle.load"):
                offenders.append(where)
            elif name in ("np.load", "numpy.load"):
                v = kw.get("allow_pickle")
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    offenders.append(where)
    assert offenders == []
