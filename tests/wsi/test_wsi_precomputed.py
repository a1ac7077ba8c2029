"""PrecomputedPredictor: replaying a saved map reproduces the predictor's run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from nucseg.wsi import segment_slide
from nucseg.wsi.precomputed import PrecomputedPredictor, precompute
from nucseg.wsi.predictors import HematoxylinPredictor


def _store(out: Path) -> tuple[np.ndarray, object]:
    import pyarrow.parquet as pq

    labels = zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]
    return labels, pq.read_table(out / "nucseg" / "nuclei.parquet")


def test_replay_gives_the_hematoxylin_run(demo_slide: Path, tmp_path: Path) -> None:
    """The translation-invariant hematoxylin map, replayed: the same labels and table."""
    pred = HematoxylinPredictor()
    replay = precompute(demo_slide, pred, tmp_path / "map", tile=256, strip=300)
    assert replay.config.name == "precomputed-hematoxylin" and replay.config.halo == pred.config.halo
    a = segment_slide(demo_slide, tmp_path / "a.zarr", model=pred, tile=256, threads=2)
    replayed = PrecomputedPredictor(tmp_path / "map")
    b = segment_slide(demo_slide, tmp_path / "b.zarr", model=replayed, tile=256, threads=2)
    assert a.nuclei == b.nuclei > 100
    (la, ta), (lb, tb) = _store(tmp_path / "a.zarr"), _store(tmp_path / "b.zarr")
    np.testing.assert_array_equal(la, lb)
    assert ta.equals(tb)
    for k in ("read", "post", "write", "read.decode", "post.watershed", "post.own", "post.measure", "write.labels"):
        assert b.timings[k] >= 0.0


def test_windows_of_any_halo_and_unknown_windows(demo_slide: Path, tmp_path: Path) -> None:
    from nucseg.wsi.reader import open_slide
    from nucseg.wsi.tiling import crop_box, make_tiles, plan_geometry, read_region, with_halo

    pred = HematoxylinPredictor()
    replay = precompute(demo_slide, pred, tmp_path / "map", tile=256)
    with open_slide(demo_slide) as reader:
        geom = plan_geometry([(lv.width, lv.height) for lv in reader.levels], reader.mpp, 0.25, tile=256, halo=64,
                             context=8)
        tile = make_tiles(geom)[6]
        for halo in (64, 128, 512):  # a corner tile's box reaches beyond the image: mirrored
            t = with_halo(tile, geom, halo)
            rgb = read_region(reader, geom, t.read)
            got = replay.predict(rgb[None])[0]
            want = pred.predict(np.pad(rgb, ((8, 8), (8, 8), (0, 0)), mode="reflect")[None])[0][8:-8, 8:-8]
            valid = crop_box(t.valid, t.read)  # all the runner uses: inside the image, away from the box's border
            np.testing.assert_array_equal(got[valid], want[valid])
        other = read_region(reader, geom, (3, 3 + 300, 5, 5 + 300))
    with pytest.raises(KeyError, match="not in the precomputed map"):
        replay.predict(other[None])
