"""The steps both whole-slide runners share: prepare_output, compute_tile, the store's open/finish."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from nucseg.wsi import RunOptions, segment_slide
from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
from nucseg.wsi.pipeline import TileParams, compute_tile, prepare_output
from nucseg.wsi.predictors import HematoxylinPredictor
from nucseg.wsi.reader import open_slide
from nucseg.wsi.store import OutputStore, StoreError
from nucseg.wsi.tiling import IdScheme, ObjectTooLargeError, make_tiles, plan_geometry

LAM, THRESHOLD = 0.03, 0.5


def _chain_prob() -> np.ndarray:
    """A 64 x 64 probability map: six touching blobs in a row (one foreground component
    from x ~1 to ~46, crossing tile 0's core and its valid box at halos 4 and 8), and a
    lone blob in tile 3."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    prob = np.zeros((64, 64))
    for cy, cx in [(12, 6), (12, 13), (12, 20), (12, 27), (12, 34), (12, 41), (48, 48)]:
        prob = np.maximum(prob, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2)))
    return prob.astype(np.float32)


def _tile_case(halo: int) -> tuple:
    geom = plan_geometry([(64, 64)], (0.25, 0.25), 0.25, tile=32, halo=halo, context=0)
    return geom, make_tiles(geom), IdScheme(geom.n_tiles)


def _crop(prob: np.ndarray, box: tuple[int, int, int, int], pad: int = 64) -> np.ndarray:
    """``prob`` on a read box that may leave the image (zeros outside: never trusted)."""
    padded = np.pad(prob, pad)
    y0, y1, x0, x1 = box
    return padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]


def test_compute_tile_enlarges_the_halo_until_the_cluster_fits() -> None:
    """Tile 0 owns a cluster wider than its margin: recomputed with halos 8 then 16, its nuclei
    then equal those of one watershed over the whole map (an independent reference)."""
    from nucseg import watershed_dynamics

    prob = _chain_prob()
    geom, tiles, scheme = _tile_case(halo=4)
    asked: list[int] = []
    clocked: dict[str, float] = {}

    def recompute(t):
        asked.append(t.read[1] - t.core[1])  # the halo of the enlarged tile
        return _crop(prob, t.read)

    out = compute_tile(
        tiles[0], _crop(prob, tiles[0].read), geom, scheme, TileParams(LAM, THRESHOLD, max_halo=16, stride=1),
        recompute=recompute, clock=lambda stage, s: clocked.__setitem__(stage, clocked.get(stage, 0.0) + s),
    )
    assert asked == [8, 16] and out.enlarged == 2
    from nucseg.wsi.pipeline import POST_STEPS

    # The stage, and its steps (the two tries that needed a larger halo included).
    assert set(clocked) == {"post", *(f"post.{step}" for step in POST_STEPS)} and clocked["post"] > 0
    assert sum(clocked[f"post.{step}"] for step in POST_STEPS) <= clocked["post"] * 1.001
    res = out.result
    assert out.record == {"tile": 0, "nuclei": len(res.ids), "approximate": 0} and res.exact.all()
    whole = watershed_dynamics(prob, LAM, threshold=THRESHOLD)
    canvas = np.zeros(prob.shape, np.int64)
    y0, y1, x0, x1 = res.box
    canvas[y0:y1, x0:x1] = res.labels
    # Owned: the whole map's nuclei whose first pixel in raster order lies in tile 0's core.
    first = {lab: divmod(int(np.argmax((whole == lab).ravel())), 64) for lab in np.unique(whole[whole > 0])}
    owned = sorted(lab for lab, (y, x) in first.items() if y < 32 and x < 32)
    assert len(owned) >= 4 and len(res.ids) == len(owned)
    got = []
    for nid in res.ids:
        under = np.unique(whole[canvas == nid])
        assert len(under) == 1 and under[0] != 0
        np.testing.assert_array_equal(canvas == nid, whole == under[0])
        got.append(int(under[0]))
    assert sorted(got) == owned
    assert out.table.num_rows == len(owned) and sorted(out.table.column("label").to_pylist()) == sorted(res.ids.tolist())


def _chain_rgb(prob: np.ndarray) -> np.ndarray:
    """An H&E-like RGB under ``_chain_prob``: darker purple where the probability is high,
    with a horizontal ramp so that each nucleus has its own stain density."""
    ramp = np.linspace(0.6, 1.0, prob.shape[1])[None, :]
    od = 1.2 * prob * ramp
    rgb = 255.0 * 10.0 ** -(od[..., None] * np.array([0.65, 0.70, 0.29]))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_compute_tile_measures_its_nuclei_after_enlarging() -> None:
    """With the RGB, the table's morphometrics of an enlarged tile are those measured on the
    whole image's watershed, nucleus by nucleus (the recomputed read box's RGB is used)."""
    from nucseg import watershed_dynamics
    from nucseg.morphometrics import TABLE_COLUMNS, measure_nuclei

    prob = _chain_prob()
    rgb = _chain_rgb(prob)
    geom, tiles, scheme = _tile_case(halo=4)
    params = TileParams(LAM, THRESHOLD, max_halo=16, stride=1)

    def crop_rgb(box):
        return np.stack([_crop(rgb[..., c], box) for c in range(3)], axis=-1)

    out = compute_tile(tiles[0], _crop(prob, tiles[0].read), geom, scheme, params,
                       recompute=lambda t: (crop_rgb(t.read), _crop(prob, t.read)), rgb=crop_rgb(tiles[0].read))
    assert out.enlarged == 2 and out.table.num_rows >= 4
    whole = watershed_dynamics(prob, LAM, threshold=THRESHOLD)
    ref = measure_nuclei(whole, rgb, mpp=geom.mpp)
    res = out.result
    y0, y1, x0, x1 = res.box
    table = out.table.to_pydict()
    for k, nid in enumerate(table["label"]):
        under = np.unique(whole[y0:y1, x0:x1][res.labels == nid])
        assert len(under) == 1 and under[0] != 0
        row = int(np.searchsorted(ref["label"], under[0]))
        for c in TABLE_COLUMNS:
            assert table[c][k] == pytest.approx(ref[c][row], rel=1e-5, abs=1e-6), c
    # The ramp gives each nucleus of the row its own hematoxylin density.
    assert len(set(np.round(table["hematoxylin_od"], 4))) == out.table.num_rows
    # Without the RGB the columns are there, NaN; a recompute that drops the RGB is refused.
    bare = compute_tile(tiles[0], _crop(prob, tiles[0].read), geom, scheme, params,
                        recompute=lambda t: _crop(prob, t.read))
    assert bare.table.column_names == out.table.column_names
    assert all(np.isnan(bare.table.column(c).to_numpy()).all() for c in TABLE_COLUMNS)
    with pytest.raises(TypeError, match=r"recompute must return \(rgb, prob\)"):
        compute_tile(tiles[0], _crop(prob, tiles[0].read), geom, scheme, params,
                     recompute=lambda t: _crop(prob, t.read), rgb=crop_rgb(tiles[0].read))


def test_compute_tile_at_the_largest_halo_strict_or_approximate() -> None:
    prob = _chain_prob()
    geom, tiles, scheme = _tile_case(halo=4)

    def never(t):
        raise AssertionError("no recomputation at max_halo")

    at_max = TileParams(LAM, THRESHOLD, max_halo=4, stride=1)
    with pytest.raises(ObjectTooLargeError):
        compute_tile(tiles[0], _crop(prob, tiles[0].read), geom, scheme, replace(at_max, strict=True),
                     recompute=never)
    out = compute_tile(tiles[0], _crop(prob, tiles[0].read), geom, scheme, replace(at_max, save_prob=True),
                       recompute=never, rgb_core=np.zeros((32, 32, 3), np.uint8))
    n_approx = int((~out.result.exact).sum())
    assert n_approx > 0 and out.record["approximate"] == n_approx and out.enlarged == 0
    assert scheme.is_approximate(out.result.ids[~out.result.exact]).all()
    np.testing.assert_array_equal(out.result.prob_core, np.rint(prob[:32, :32] * 255).astype(np.uint8))
    assert out.result.rgb_core.shape == (32, 32, 3)


@pytest.fixture
def small_store(tmp_path: Path) -> tuple[Path, Path, object]:
    slide = write_pyramid_tiff(tmp_path / "s.tif", synthetic_he((256, 384), seed=3)[0], mpp=0.25, levels=1)
    out = tmp_path / "s.zarr"
    summary = segment_slide(slide, out, model=HematoxylinPredictor(), tile=128, tissue="none", threads=1)
    return slide, out, summary


def test_prepare_output_reopens_skips_or_refuses(small_store: tuple) -> None:
    slide, out, summary = small_store
    pred = HematoxylinPredictor()
    with open_slide(slide) as reader:
        opts = RunOptions(tile=128, tissue="none")
        skipped = prepare_output(reader, pred, out, opts, skip_complete=True)
        assert skipped.store is None and skipped.skipped is not None
        assert skipped.skipped.nuclei == summary.nuclei and skipped.skipped.tiles == summary.tiles == 6
        with pytest.raises(StoreError, match="complete but was made with other settings .*lam"):
            prepare_output(reader, pred, out, replace(opts, lam=0.5), skip_complete=True)
        with pytest.raises(StoreError, match="already exists; pass --resume"):
            prepare_output(reader, pred, out, opts)
        again = prepare_output(reader, pred, out, replace(opts, resume=True))
        assert again.done == set(range(6)) and again.todo == [] and again.resumed == 6
        assert again.settings["tile"] == 128 and again.geom.size == (256, 384) and again.skipped is None
        params = again.params
        assert (params.lam, params.threshold) == (pred.config.lam, pred.config.threshold) and not params.strict
        assert params.max_halo % params.stride == 0 and params.max_halo >= again.geom.halo


def test_open_keeps_other_writers_tmp_files_and_finish_without_pyramid(small_store: tuple) -> None:
    _, out, summary = small_store
    live = out / "nucseg" / "tiles" / "000003.json.4242.tmp"  # another writer's file, mid-write
    live.write_text("{")
    store = OutputStore.open(out)
    assert live.exists()
    lvl1 = zarr.open_array(str(out / "labels" / "nuclei" / "1"), mode="r+")
    lvl0 = zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")
    assert lvl1[...].any()
    lvl1[...] = 0
    table = store.finish({"tiles_enlarged": 0}, pyramid=False)
    assert not lvl1[...].any()  # built elsewhere (by the Dask tasks), not here
    assert table.is_file() and store.meta["status"] == "complete"
    assert store.meta["nuclei"] == summary.nuclei and store.meta["tiles_done"] == 6
    store.finish({})
    np.testing.assert_array_equal(lvl1[...], lvl0[::2, ::2])
    settings = {k: v for k, v in store.meta["settings"].items() if k != "label_dtype"}
    OutputStore.resume(out, settings=settings)  # the same settings: accepted
    assert not live.exists()  # resume (a lone writer) drops leftovers
    with pytest.raises(StoreError, match="cannot open .* for writing"):
        OutputStore.open(out / "nucseg")


def test_resume_of_parts_without_morphometrics_fills_nan(small_store: tuple, caplog: pytest.LogCaptureFixture) -> None:
    """A store begun before the table had morphometrics, then resumed: the old tiles' nuclei get
    NaN there (with a warning), the recomputed tiles are measured as in a fresh run."""
    import pyarrow.parquet as pq

    from nucseg.morphometrics import TABLE_COLUMNS

    slide, out, summary = small_store
    fresh = pq.read_table(out / "nucseg" / "nuclei.parquet")
    root = zarr.open_group(str(out), mode="r+")
    fresh_ome = dict(root.attrs["ome"])
    levels = [root[str(k)][...] for k in range(len(fresh_ome["multiscales"][0]["datasets"]))]
    assert len(levels) >= 2
    # An earlier nucseg wrote a one-level overview without rendering metadata.
    for k in range(1, len(levels)):
        shutil.rmtree(out / str(k))
    first = fresh_ome["multiscales"][0]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{**first, "datasets": first["datasets"][:1]}]}
    old_tiles, redo = {0, 1, 2}, {3, 4, 5}
    for i in old_tiles:  # as an earlier nucseg wrote them
        part = out / "nucseg" / "parts" / f"{i:06d}.parquet"
        t = pq.read_table(part)
        pq.write_table(t.drop_columns(list(TABLE_COLUMNS)), part)
    for i in redo:
        (out / "nucseg" / "tiles" / f"{i:06d}.json").unlink()
    with caplog.at_level("WARNING", logger="nucseg.wsi.table"):
        s = segment_slide(slide, out, model=HematoxylinPredictor(), tile=128, tissue="none", threads=1, resume=True)
    assert s.tiles_run == 3 and s.nuclei == summary.nuclei
    assert "3 tile(s) were computed by an earlier nucseg without morphometrics" in caplog.text
    table = pq.read_table(out / "nucseg" / "nuclei.parquet")
    assert table.column_names == fresh.column_names and table.num_rows == fresh.num_rows
    tile = table.column("tile").to_numpy()
    assert set(np.unique(tile)) == old_tiles | redo
    old_rows = np.isin(tile, list(old_tiles))
    for c in TABLE_COLUMNS:
        col = table.column(c).to_numpy(zero_copy_only=False)
        assert table.column(c).null_count == 0 and np.isnan(col[old_rows]).all(), c
        assert np.isfinite(col[~old_rows]).all(), c
    # Remeasured tiles equal the fresh run's rows.
    by_label = {lab: k for k, lab in enumerate(fresh.column("label").to_pylist())}
    rows = [by_label[lab] for lab in np.asarray(table.column("label"))[~old_rows].tolist()]
    for c in TABLE_COLUMNS:
        np.testing.assert_array_equal(table.column(c).to_numpy()[~old_rows], fresh.column(c).to_numpy()[rows])
    # The overview got its pyramid and rendering back: the store is as a fresh run's.
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["ome"] == fresh_ome
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(root[str(k)][...], level, err_msg=f"level {k}")
    assert not OutputStore.open(out).complete_overview()  # nothing left to do
