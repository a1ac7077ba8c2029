"""Outputs at fsspec URLs: ``memory://`` (fsspec's in-process MemoryFileSystem) stands in
for an object store. Records, table parts and spill files are write-once objects there
(no rename); the result must equal a run into a local folder, array for array, row for
row, and the QC picture byte for byte.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from nucseg.cli.wsi import main
from nucseg.wsi import segment_slide
from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
from nucseg.wsi.location import Location, LocationError, is_url, probe_write
from nucseg.wsi.predictors import HematoxylinPredictor
from nucseg.wsi.store import StoreError

RUN = {"model": "hematoxylin", "tile": 128, "tissue": "none", "save_prob": True, "save_image": True}


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """384 x 512 px: 3 x 4 tiles of 128 px, nuclei crossing every tile border."""
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    return write_pyramid_tiff(path, synthetic_he((384, 512), seed=5)[0], mpp=0.25, levels=2)


@pytest.fixture(scope="module")
def reference(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The single-process run into a local folder, and its QC picture."""
    d = tmp_path_factory.mktemp("ref")
    segment_slide(slide, d / "ref.zarr", threads=1, qc=d / "qc.png", **RUN)
    return d / "ref.zarr", d / "qc.png"


@pytest.fixture
def root() -> str:
    """A fresh ``memory://`` folder, emptied afterwards (the memory filesystem is process-wide)."""
    url = f"memory://nucseg-test-{uuid.uuid4().hex[:8]}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _records(store: str | Path) -> list[str]:
    return sorted(f.name for f in (Location.of(store) / "nucseg" / "tiles").files(".json"))


def _assert_same_store(ref: Path, out: str) -> None:
    """Every array (labels with pyramid, probability, image with pyramid), the table, the
    run settings and totals, the completion records; no spill or temporary file left."""
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(out, mode="r")
    with warnings.catch_warnings():  # the nucseg/ folder (records, table) is not a zarr node
        warnings.filterwarnings("ignore", "Object at nucseg is not recognized")
        arrays = {name: node for name, node in a.members(max_depth=None) if isinstance(node, zarr.Array)}
    assert {"labels/nuclei/0", "labels/nuclei/1", "prob/0", "0", "1"} <= set(arrays)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(arr[...], b[name][...], err_msg=name)
    with (Location.of(out) / "nucseg" / "nuclei.parquet").open_read() as fh:
        tb = pq.read_table(fh)
    ta = pq.read_table(ref / "nucseg" / "nuclei.parquet")
    assert ta.num_rows > 20 and ta.equals(tb)
    ma, mb = a.attrs["nucseg"], b.attrs["nucseg"]
    assert ma["settings"] == mb["settings"] and mb["status"] == "complete"
    assert (ma["nuclei"], ma["tiles_done"]) == (mb["nuclei"], mb["tiles_done"])
    assert _records(ref) == _records(out) and len(_records(out)) == 12
    fs, path = fsspec.core.url_to_fs(out)
    left = [p for p in fs.find(path) if p.endswith(".tmp") or "/spill/" in p or ".nucseg-probe" in p]
    assert left == []


def test_location_paths_and_urls() -> None:
    assert is_url("s3://b/x.zarr") and is_url("simplecache::s3://b/x") and not is_url("/a/b.zarr")
    assert not is_url("relative/c.zarr") and not is_url(Path("/a"))
    local = Location.of("file:///data/out.zarr")
    assert local.local and local.public == Path("/data/out.zarr")
    url = Location.of("s3://bucket/res/")  # s3fs is installed here; nothing is contacted
    assert not url.local and url.url == "s3://bucket/res"
    assert (url / "a.zarr").public == "s3://bucket/res/a.zarr" and (url / "a.zarr").parent == url
    assert (url / "a.zarr").name == "a.zarr" and url.parent.url == "s3://bucket"
    assert Location.of("memory://x.zarr").parent.url == "memory://"


def test_single_process_run_into_memory_equals_local(slide: Path, reference: tuple[Path, Path],
                                                     root: str, tmp_path: Path) -> None:
    out = f"{root}/run.zarr"
    s = segment_slide(slide, out, threads=2, qc=tmp_path / "qc.png", **RUN)
    assert s.output == out and s.table == f"{out}/nucseg/nuclei.parquet" and s.tiles_run == 12
    _assert_same_store(reference[0], out)
    assert (tmp_path / "qc.png").read_bytes() == reference[1].read_bytes()
    # The existing-output protection holds at a URL too, before the model is loaded.
    with pytest.raises(StoreError, match=f"output {out} already exists; pass --resume"):
        segment_slide(slide, out, model="no-such-model.safetensors", tile=128, tissue="none")


def test_kill_and_resume_in_memory(slide: Path, reference: tuple[Path, Path], root: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A write error after 5 tiles (as a crash mid-run): the finished tiles' records are
    listed from the filesystem, --resume computes only the others, the result is exact.
    Then records lost after the fact are recomputed, and --overwrite starts over."""
    from nucseg.wsi.store import OutputStore

    out = f"{root}/run.zarr"
    real = OutputStore._write_tile
    calls = {"n": 0}

    def flaky(self, result, table, record, scheme):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError(5, "Input/output error")
        return real(self, result, table, record, scheme)

    monkeypatch.setattr(OutputStore, "_write_tile", flaky)
    with pytest.raises(StoreError, match=f"cannot write tile .* to {out}: .*Input/output error.*--resume"):
        segment_slide(slide, out, threads=1, **RUN)
    monkeypatch.setattr(OutputStore, "_write_tile", real)
    assert len(_records(out)) == 5
    assert zarr.open_group(out, mode="r").attrs["nucseg"]["status"] == "running"
    s = segment_slide(slide, out, threads=1, resume=True, **RUN)
    assert (s.tiles_resumed, s.tiles_run) == (5, 7)
    _assert_same_store(reference[0], out)

    tiles = Location.of(out) / "nucseg" / "tiles"
    for f in tiles.files(".json")[::3]:
        f.remove()
    s = segment_slide(slide, out, threads=1, resume=True, **RUN)
    assert (s.tiles_resumed, s.tiles_run) == (8, 4)
    _assert_same_store(reference[0], out)

    s = segment_slide(slide, out, threads=1, overwrite=True, **RUN)
    assert s.tiles_run == 12
    _assert_same_store(reference[0], out)
    # --overwrite never deletes what is not a nucseg output, at a URL either.
    fsspec.filesystem("memory").pipe_file(fsspec.core.url_to_fs(f"{root}/precious/thesis.tex")[1], b"x")
    with pytest.raises(StoreError, match="not an output of nucseg-wsi"):
        segment_slide(slide, f"{root}/precious", overwrite=True, **RUN)
    assert Location.of(f"{root}/precious/thesis.tex").exists()


def test_dask_threads_into_memory_equal_single_process(slide: Path, reference: tuple[Path, Path], root: str,
                                                       tmp_path: Path) -> None:
    """A LocalCluster of threads (processes=False: the workers share the memory filesystem),
    2 x 2 tiles per task so that nuclei crossing group borders go through spill objects;
    then a batch into a URL folder, with QC pictures sent back by the workers."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from nucseg.wsi.distributed import run_distributed, store_status

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        out = f"{root}/d.zarr"
        [res] = run_distributed(slide, out, scheduler=client, model=HematoxylinPredictor(), group=2,
                                qc=tmp_path / "d_qc.png", **{k: v for k, v in RUN.items() if k != "model"})
        assert res.status == "done" and res.output == out and res.details["spill_chunks"] > 0
        assert res.summary.table == f"{out}/nucseg/nuclei.parquet" and res.summary.qc == tmp_path / "d_qc.png"
        _assert_same_store(reference[0], out)
        assert (tmp_path / "d_qc.png").read_bytes() == reference[1].read_bytes()
        # A batch into a URL folder: one store per slide; the complete one is skipped.
        other = write_pyramid_tiff(tmp_path / "other.tif", synthetic_he((256, 256), seed=6)[0], mpp=0.25, levels=1)
        outs = run_distributed([slide, other], f"{root}/batch/", scheduler=client, qc=tmp_path / "qc", **RUN)
        assert [o.output for o in outs] == [f"{root}/batch/s.zarr", f"{root}/batch/other.zarr"]
        assert [o.status for o in outs] == ["done", "done"] and store_status(outs[1].output) == "complete"
        assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["other_qc.png", "s_qc.png"]
        _assert_same_store(reference[0], outs[0].output)
        again = run_distributed([slide, other], f"{root}/batch", scheduler=client, **RUN)
        assert [o.status for o in again] == ["skipped", "skipped"]


def test_command_writes_a_batch_to_a_url(slide: Path, reference: tuple[Path, Path], root: str,
                                        capsys: pytest.CaptureFixture) -> None:
    opts = ["--model", "hematoxylin", "--tile", "128", "--tissue", "none", "--save-prob", "--save-image"]
    assert main([str(slide), "--out-dir", f"{root}/cli", *opts]) == 0
    assert f"output: {root}/cli/s.zarr  table: {root}/cli/s.zarr/nucseg/nuclei.parquet" in capsys.readouterr().err
    _assert_same_store(reference[0], f"{root}/cli/s.zarr")
    assert main([str(slide), "--out-dir", f"{root}/cli", "--quiet", *opts]) == 0  # complete: skipped


def test_unwritable_url_fails_early_with_one_line(slide: Path, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write probe at a URL: before any tile (single process) or any task (Dask)."""
    from fsspec.implementations.memory import MemoryFileSystem

    def refuse(self, path, *a, **k):  # noqa: ANN001, ANN202
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", refuse)
    assert "cannot write to the output folder memory://" in probe_write(Location.of(root))
    with pytest.raises(StoreError, match=f"output {root}/o.zarr: cannot write to the output folder {root}: "
                                         "Access Denied"):
        segment_slide(slide, f"{root}/o.zarr", **RUN)
    assert not Location.of(f"{root}/o.zarr").exists()
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from nucseg.wsi.distributed import DistributedError, run_distributed

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        with pytest.raises(DistributedError, match=r"worker .*cannot write to the output folder memory://.*Access"):
            run_distributed(slide, f"{root}/res", scheduler=client, **RUN)


def test_bad_urls_are_clear_errors(slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(LocationError, match=r"output nosuch://b/o.zarr: unknown protocol nosuch://"):
        segment_slide(slide, "nosuch://b/o.zarr", model="hematoxylin")
    # A protocol fsspec knows whose backend is not installed: the message names the package.
    from fsspec.registry import known_implementations

    monkeypatch.setitem(known_implementations, "fakecloud",
                        {"class": "fakecloudfs.FakeCloudFileSystem", "err": "Install fakecloudfs"})
    with pytest.raises(LocationError, match=r"fakecloud:// filesystem needs the package fakecloudfs.*pip install "
                                            "fakecloudfs"):
        segment_slide(slide, "fakecloud://b/o.zarr", model="hematoxylin")
    pytest.importorskip("distributed")
    from nucseg.wsi.distributed import run_distributed

    with pytest.raises(LocationError, match="unknown protocol nosuch://"):  # before a cluster is started
        run_distributed(slide, "nosuch://b/results", workers=1)
    # The command: one line, exit status 1, and --geojson/--demo need a local store.
    for argv, message in [
        ([str(slide), "nosuch://b/o.zarr"], "unknown protocol nosuch://"),
        ([str(slide), "fakecloud://b/o.zarr"], "pip install fakecloudfs"),
        ([str(slide), "memory://o.zarr", "--geojson", str(tmp_path / "g.json")], "--geojson reads a local store"),
        (["--demo", "memory://demo.zarr"], "give a local path"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
