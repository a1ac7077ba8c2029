"""run_distributed on a LocalCluster of 2 worker processes: identical to segment_slide.

The reference is always :func:`segment_slide` (single process) on the same slide with
the same settings; outputs are compared label for label (all pyramid levels), pixel for
pixel (probability) and row for row (nucleus table).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("distributed")

import cloudpickle  # noqa: E402 - dask.distributed depends on it

from nucseg.morphometrics import TABLE_COLUMNS  # noqa: E402
from nucseg.wsi import segment_slide  # noqa: E402
from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff  # noqa: E402
from nucseg.wsi.distributed import (  # noqa: E402
    DistributedError,
    ModelPlugin,
    group_box,
    group_of,
    outcome_lines,
    output_path,
    plan_outputs,
    relax_malloc_trim,
    run_distributed,
    split_even,
    split_result,
    store_status,
)
from nucseg.wsi.predictors import HematoxylinPredictor  # noqa: E402
from nucseg.wsi.store import apply_pending_spill, apply_spill, pending_spill, save_spill  # noqa: E402

# The predictors below are defined here: ship them to the workers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KillOnce(HematoxylinPredictor):
    """Kills its own worker process on its second batch, once per run (marked by a file).

    With 2x2 tiles per task and batches of 2, the second batch comes after the task has
    written its first two tiles: the kill lands mid-task, between writes.
    """

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.calls = 0

    def predict(self, rgb: np.ndarray) -> np.ndarray:  # noqa: D102
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().predict(rgb)


class FailAfter(HematoxylinPredictor):
    """Raises from its third batch on: each worker finishes one task, then the run fails."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def predict(self, rgb: np.ndarray) -> np.ndarray:  # noqa: D102
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("simulated crash")
        return super().predict(rgb)


class CountLoads(HematoxylinPredictor):
    """Appends the worker's pid to a file each time it is unpickled (= shipped to a worker)."""

    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = str(log)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _arrays(store: Path) -> dict[str, np.ndarray]:
    import warnings

    root = zarr.open_group(str(store), mode="r")
    with warnings.catch_warnings():  # the nucseg/ folder (records, table) is not a zarr node
        warnings.filterwarnings("ignore", "Object at nucseg is not recognized")
        members = list(root.members(max_depth=None))
    return {name: node[...] for name, node in members if isinstance(node, zarr.Array)}


def _assert_same_store(ref: Path, out: Path) -> None:
    """Every array (labels and their pyramid, probability, image), the table, the records."""
    import pyarrow.parquet as pq

    a, b = _arrays(ref), _arrays(out)
    assert sorted(a) == sorted(b) and "labels/nuclei/1" in a
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ta = pq.read_table(ref / "nucseg" / "nuclei.parquet")
    tb = pq.read_table(out / "nucseg" / "nuclei.parquet")
    assert ta.num_rows > 100 and ta.equals(tb)
    # Both runners measure every nucleus (NaN would also make equals() fail).
    for c in TABLE_COLUMNS:
        assert np.isfinite(tb.column(c).to_numpy()).all(), c
    ma = zarr.open_group(str(ref), mode="r").attrs["nucseg"]
    mb = zarr.open_group(str(out), mode="r").attrs["nucseg"]
    assert ma["settings"] == mb["settings"]
    assert ma["nuclei"] == mb["nuclei"] and mb["status"] == "complete"
    assert ma.get("approximate_nuclei") == mb.get("approximate_nuclei")
    assert sorted(p.name for p in (ref / "nucseg" / "tiles").iterdir()) == sorted(
        p.name for p in (out / "nucseg" / "tiles").iterdir()
    )
    assert not (out / "nucseg" / "spill").exists()


@pytest.fixture(scope="module")
def reference(demo_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    segment_slide(
        demo_slide, out, model=HematoxylinPredictor(), tile=256, tissue="none", save_prob=True, save_image=True,
        threads=1, qc=out.parent / "ref_qc.png",
    )
    return out


def test_equals_single_process(client, demo_slide: Path, reference: Path, tmp_path: Path) -> None:
    """2 workers, 2x2 tiles per task: the same labels, probability and table, and the same
    QC picture, byte for byte (rendered on a worker from the same overview and store)."""
    [res] = run_distributed(
        demo_slide, tmp_path / "d.zarr", scheduler=client, model=HematoxylinPredictor(), tile=256,
        tissue="none", save_prob=True, save_image=True, qc=tmp_path / "d_qc.png",
    )
    assert res.status == "done" and res.summary is not None
    assert res.summary.tiles_run == res.summary.tiles == 20
    # 20 tiles in 2x2 groups: 3 x 2 tasks; nuclei crossing group borders were spilled.
    assert res.details["tile_tasks"] == 6 and res.details["spill_chunks"] > 0
    _assert_same_store(reference, tmp_path / "d.zarr")
    assert res.summary.qc == tmp_path / "d_qc.png"
    assert (tmp_path / "d_qc.png").read_bytes() == (reference.parent / "ref_qc.png").read_bytes()


def test_equals_single_process_with_glass_skipped(client, tmp_path: Path) -> None:
    """With a tissue mask, the workers get the same tissue map and skip the same glass
    (pipeline.predict_tiles): the very same store as one process."""
    slide = write_pyramid_tiff(tmp_path / "s.tif", synthetic_he((768, 1024), seed=5, tissue_fraction=0.35)[0],
                               mpp=0.25, levels=2)
    kwargs = {"model": "hematoxylin", "tile": 128, "halo": 64, "save_prob": True}
    ref = segment_slide(slide, tmp_path / "ref.zarr", threads=1, **kwargs)
    assert 0 < ref.tiles_tissue < ref.tiles
    [res] = run_distributed(slide, tmp_path / "d.zarr", scheduler=client, tissue="auto", **kwargs)
    assert res.status == "done" and res.summary.tiles_run == ref.tiles_tissue
    _assert_same_store(tmp_path / "ref.zarr", tmp_path / "d.zarr")
    prob = _arrays(tmp_path / "d.zarr")["prob/0"]
    assert (prob == 0).mean() > 0.3  # 0 beyond the tissue's margin


def test_small_tiles_enlarged_halos_one_tile_per_task(client, demo_slide: Path, tmp_path: Path) -> None:
    """Tiles of 128 px redone with larger halos (nuclei reach far into other chunks)."""
    ref = tmp_path / "ref.zarr"
    s = segment_slide(demo_slide, ref, model="hematoxylin", tile=128, halo=12, tissue="none", threads=1)
    [res] = run_distributed(
        demo_slide, tmp_path / "d.zarr", scheduler=client, model="hematoxylin", tile=128, halo=12,
        tissue="none", group=1,
    )
    meta = zarr.open_group(str(ref), mode="r").attrs["nucseg"]
    assert res.details["tiles_enlarged"] == meta["tiles_enlarged"] > 0
    assert res.details["tile_tasks"] == 80 and res.summary.nuclei == s.nuclei
    _assert_same_store(ref, tmp_path / "d.zarr")


def test_killed_worker_costs_a_retry(client, demo_slide: Path, reference: Path, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    n_before = len(client.scheduler_info()["workers"])
    [res] = run_distributed(
        demo_slide, tmp_path / "d.zarr", scheduler=client, model=KillOnce(marker), tile=256,
        tissue="none", save_prob=True, save_image=True,
    )
    assert marker.exists()  # a worker process really died mid-task
    assert res.status == "done"
    _assert_same_store(reference, tmp_path / "d.zarr")
    client.wait_for_workers(n_before, timeout=60)  # the nanny restarted it


def test_model_shipped_once_per_worker(client, demo_slide: Path, tmp_path: Path) -> None:
    log = tmp_path / "loads.txt"
    [res] = run_distributed(demo_slide, tmp_path / "d.zarr", scheduler=client, model=CountLoads(log), tile=256,
                            tissue="none", group=1)
    pids = log.read_text().split()
    assert res.details["tile_tasks"] == 20
    assert len(pids) == len(set(pids)) <= 2  # one load per worker process, not per task


def test_resume_after_failure_and_batch_skips(client, demo_slide: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_distributed(demo_slide, out, scheduler=client, model=FailAfter(), tile=256, tissue="none",
                        save_prob=True, save_image=True, group=1)
    store = output_path(demo_slide, out)
    done = len(list((store / "nucseg" / "tiles").glob("*.json")))
    assert 0 < done < 20
    assert store_status(store) == "partial" and store_status(out / "nothing.zarr") == "missing"
    with pytest.raises(ValueError, match="not complete; pass --resume"):
        run_distributed(demo_slide, out, scheduler=client, model="hematoxylin", tile=256, tissue="none",
                        save_prob=True, save_image=True)
    [res] = run_distributed(demo_slide, out, scheduler=client, model="hematoxylin", tile=256, tissue="none",
                            save_prob=True, save_image=True, resume=True)
    assert res.summary.tiles_resumed == done and res.summary.tiles_run == 20 - done
    _assert_same_store(reference, store)
    assert store_status(store) == "complete"
    # A batch: the complete slide is skipped, a broken one fails alone, a new one is done.
    other = write_pyramid_tiff(tmp_path / "other.tif", synthetic_he((384, 512), seed=4)[0], mpp=0.25, levels=2)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a slide")
    outs = run_distributed([demo_slide, broken, other], out, scheduler=client, model="hematoxylin", tile=256,
                           tissue="none", save_prob=True, save_image=True, errors="collect", qc=tmp_path / "qc")
    assert [o.status for o in outs] == ["skipped", "failed", "done"]
    # QC pictures: one per slide done here, none for the skipped or the failed one.
    assert [p.name for p in (tmp_path / "qc").iterdir()] == ["other_qc.png"] and outs[2].summary.qc is not None
    assert outs[0].summary.nuclei == res.summary.nuclei and "broken.tif" in outs[1].error
    assert outs[2].output == out / "other.zarr" and outs[2].summary.nuclei > 10
    lines = outcome_lines(outs)
    assert "skipped" in lines[0] and "FAILED" in lines[1] and lines[-1] == "slides: 1 done, 1 skipped, 1 failed"


def test_single_process_resume_of_a_dask_run(client, demo_slide: Path, reference: Path, tmp_path: Path) -> None:
    """An interrupted Dask run finished by segment_slide(resume=True), which merges the spill
    files itself; the same after an explicit apply_pending_spill."""
    import shutil

    out = tmp_path / "d.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_distributed(demo_slide, out, scheduler=client, model=FailAfter(), tile=256, tissue="none",
                        save_prob=True, save_image=True)
    assert pending_spill(out)  # nuclei crossing group borders are waiting in spill files
    explicit = tmp_path / "explicit.zarr"
    shutil.copytree(out, explicit)
    assert apply_pending_spill(explicit) > 0 and not (explicit / "nucseg" / "spill").exists()
    for store in (out, explicit):
        segment_slide(demo_slide, store, model="hematoxylin", tile=256, tissue="none", save_prob=True,
                      save_image=True, threads=1, resume=True)
        _assert_same_store(reference, store)


def test_worker_threads_reuse_their_open_slide(demo_slide: Path, tmp_path: Path, monkeypatch) -> None:
    """One worker with 2 threads, two slides, one tile per task: a thread opens a slide and
    its store once and reuses them for its next tasks of that slide; both outputs are still
    the single-process ones."""
    import threading

    from distributed import Client, LocalCluster

    other = write_pyramid_tiff(tmp_path / "other.tif", synthetic_he((640, 640), seed=4)[0], mpp=0.25, levels=2)
    opened = []
    open_job = ModelPlugin.open_job

    def spy(self, job):
        job_open = open_job(self, job)
        opened.append((threading.get_ident(), job_open))
        return job_open

    monkeypatch.setattr(ModelPlugin, "open_job", spy)
    kwargs = {"model": "hematoxylin", "tile": 128, "tissue": "none", "save_image": True}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        outs = run_distributed([demo_slide, other], tmp_path / "out", scheduler=client, group=1, **kwargs)
    assert [o.status for o in outs] == ["done", "done"]
    tasks = sum(o.details["tile_tasks"] for o in outs)
    assert len(opened) == tasks > 80
    kept = {id(j): j for _, j in opened}
    # Each open slide belongs to one thread and serves many tasks: 2 threads x 2 slides,
    # plus a reopening whenever a thread goes back to the other slide (6 seen for 105 tasks).
    assert len(kept) < len(opened) // 8
    assert all(len({t for t, j in opened if j is k}) == 1 for k in kept.values())
    for slide, o in zip([demo_slide, other], outs):
        ref = tmp_path / f"ref_{slide.stem}.zarr"
        segment_slide(slide, ref, threads=1, **kwargs)
        _assert_same_store(ref, o.output)


def test_relax_malloc_trim(monkeypatch) -> None:
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536; the worker plugin restores glibc's thresholds."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert relax_malloc_trim() is False
    for value in ("not a number", str(1 << 30)):
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", value)
        assert relax_malloc_trim() is False
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert relax_malloc_trim() is glibc


def test_split_even() -> None:
    assert split_even(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_even([1, 2], 4) == [[1], [2]] and split_even([], 3) == []
    parts = split_even(list(range(47)), 4)
    assert sum(parts, []) == list(range(47)) and {len(p) for p in parts} == {11, 12}


def test_unwritable_output_fails_early(client, demo_slide: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DistributedError, match=r"worker tcp://.*cannot write to the output folder .*a_file"):
        run_distributed(demo_slide, blocker / "results", scheduler=client, model="hematoxylin", tissue="none")
    # memory:// is per process: worker processes would each write their own, invisible store.
    with pytest.raises(DistributedError, match="memory://x/res lives in the memory of one process"):
        run_distributed(demo_slide, "memory://x/res", scheduler=client, model="hematoxylin", tissue="none")


def test_split_and_apply_spill(tmp_path: Path) -> None:
    """Pixels outside the group's region become spill; applying it restores the whole nucleus."""
    from nucseg.wsi.tiling import TileResult, make_tiles, plan_geometry

    geom = plan_geometry([(64, 48)], (0.25, 0.25), 0.25, tile=16, halo=8, context=2)
    assert geom.grid == (3, 4)
    tiles = make_tiles(geom)
    assert [group_of(i, geom.grid, 2) for i in range(12)] == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3]
    assert group_box(3, geom, 2) == (32, 48, 32, 64)
    # A nucleus of tile 5 (group 0, region y<32, x<32) reaching into chunks 6 (group 1) and 10 (group 3).
    full = np.zeros((48, 64), np.uint32)
    full[28:36, 28:36] = 7
    res = TileResult(
        tile=tiles[5], box=(28, 36, 28, 36), labels=full[28:36, 28:36].copy(), ids=np.array([7], np.uint32),
        exact=np.array([True]), area=np.array([64]), mean_prob=np.array([0.9], np.float32),
        centroid=np.zeros((1, 2)), bbox=np.zeros((1, 4), np.int64),
    )
    inside, spill = split_result(res, group_box(0, geom, 2), geom)
    assert inside.box == (28, 32, 28, 32) and (inside.labels == 7).all()
    assert sorted(spill) == [6, 9, 10]  # chunks (row, col) (1, 2), (2, 1), (2, 2)
    assert sum(len(ids) for _, ids in spill.values()) == 64 - 16
    # Apply to a store laid out like the runner's (chunks = tiles).
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    nuc = root.create_group("labels").create_group("nuclei")
    lab = nuc.create_array("0", shape=(48, 64), chunks=(16, 16), dtype="uint32", fill_value=0)
    for dest, (yx, ids) in spill.items():
        save_spill(tmp_path / "s.zarr", dest, 5, yx, ids)
    lab[28:32, 28:32] = inside.labels
    assert apply_spill(tmp_path / "s.zarr", [6, 9, 10], geom.n_tiles) == 48
    np.testing.assert_array_equal(lab[...], full)


def test_outputs_and_argument_checks(demo_slide: Path, tmp_path: Path) -> None:
    assert output_path("/d/x.ome.tiff", "/o") == Path("/o/x.zarr")
    assert output_path("/d/x.svs", "/o") == Path("/o/x.zarr")
    assert plan_outputs([demo_slide], tmp_path / "one.zarr") == [(demo_slide, tmp_path / "one.zarr")]
    with pytest.raises(ValueError, match="would both write"):
        plan_outputs(["/a/s.svs", "/b/s.tif"], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        plan_outputs([], tmp_path)
    for kwargs, exc, match in [
        ({"tile": 0}, ValueError, "tile must be"),
        ({"group": 0}, ValueError, "group must be"),
        ({"errors": "ignore"}, ValueError, "errors must be"),
        ({"resume": True, "overwrite": True}, ValueError, "exclusive"),
        ({"scheduler": "tcp://x:1", "workers": 2}, ValueError, "exclusive"),
        ({"scheduler": 5}, TypeError, "scheduler must be"),
    ]:
        with pytest.raises(exc, match=match):
            run_distributed(demo_slide, tmp_path, **kwargs)
    with pytest.raises(FileNotFoundError, match="slide not found"):
        run_distributed(tmp_path / "missing.svs", tmp_path)


def test_local_cluster_is_started_and_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """workers=N: a LocalCluster of N processes, its dashboard logged, closed at the end."""
    import logging

    slide = write_pyramid_tiff(tmp_path / "s.tif", synthetic_he((384, 512), seed=2)[0], mpp=0.25, levels=2)
    ref = tmp_path / "ref.zarr"
    segment_slide(slide, ref, model="hematoxylin", tile=256, tissue="none", threads=1)
    with caplog.at_level(logging.INFO, logger="nucseg.wsi.distributed"):
        [res] = run_distributed(slide, tmp_path / "out", workers=1, model="hematoxylin", tile=256, tissue="none")
    assert res.status == "done" and res.output == tmp_path / "out" / "s.zarr"
    assert any("local Dask cluster: 1 workers" in r.message and "dashboard http" in r.message for r in caplog.records)
    np.testing.assert_array_equal(_arrays(ref)["labels/nuclei/0"], _arrays(res.output)["labels/nuclei/0"])


def test_split_result_partitions_the_owned_pixels() -> None:
    """Property: inside + spill = the tile's owned pixels, nothing lost, nothing twice."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nucseg.wsi.tiling import TileResult, make_tiles, plan_geometry

    geom = plan_geometry([(80, 72)], (0.25, 0.25), 0.25, tile=16, halo=8, context=2)
    tiles = make_tiles(geom)

    @settings(max_examples=60, deadline=None)
    @given(
        tile=st.integers(0, len(tiles) - 1),
        group=st.integers(1, 3),
        dy=st.tuples(st.integers(-12, 12), st.integers(1, 30)),
        dx=st.tuples(st.integers(-12, 12), st.integers(1, 30)),
        seed=st.integers(0, 2**16),
    )
    def check(tile: int, group: int, dy: tuple, dx: tuple, seed: int) -> None:
        t = tiles[tile]
        y0 = min(max(0, t.core[0] + dy[0]), 71)
        x0 = min(max(0, t.core[2] + dx[0]), 79)
        box = (y0, min(72, y0 + dy[1]), x0, min(80, x0 + dx[1]))
        lab = np.random.default_rng(seed).integers(0, 3, (box[1] - box[0], box[3] - box[2])).astype(np.uint32)
        res = TileResult(tile=t, box=box, labels=lab, ids=np.array([1, 2], np.uint32), exact=np.ones(2, bool),
                         area=np.zeros(2), mean_prob=np.zeros(2, np.float32), centroid=np.zeros((2, 2)),
                         bbox=np.zeros((2, 4), np.int64))
        region = group_box(group_of(t.index, geom.grid, group), geom, group)
        inside, spill = split_result(res, region, geom)
        full = np.zeros((72, 80), np.uint32)
        full[box[0]:box[1], box[2]:box[3]] = lab
        got = np.zeros_like(full)
        count = np.zeros(full.shape, int)
        if inside.box is not None:
            iy0, iy1, ix0, ix1 = inside.box
            assert region[0] <= iy0 and iy1 <= region[1] and region[2] <= ix0 and ix1 <= region[3]
            got[iy0:iy1, ix0:ix1] = inside.labels
            count[iy0:iy1, ix0:ix1] += inside.labels != 0
        for chunk, (yx, ids) in spill.items():
            assert (yx[:, 0] // 16 * geom.grid[1] + yx[:, 1] // 16 == chunk).all()
            inside_region = (yx[:, 0] >= region[0]) & (yx[:, 0] < region[1]) & (yx[:, 1] >= region[2]) & (
                yx[:, 1] < region[3])
            assert not inside_region.any()
            got[yx[:, 0], yx[:, 1]] = ids
            count[yx[:, 0], yx[:, 1]] += 1
        np.testing.assert_array_equal(got, full)
        assert count.max() <= 1

    check()
