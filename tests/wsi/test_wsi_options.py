"""RunOptions: the run's options as one validated, frozen object."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import zarr

from nucseg.wsi import RunOptions, segment_slide
from nucseg.wsi.demo import write_pyramid_tiff
from nucseg.wsi.distributed import run_distributed
from nucseg.wsi.pipeline import prepare_output


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tile": 8}, ValueError, "tile must be an integer >= 16"),
        ({"halo": 0}, ValueError, "halo must be"),
        ({"max_halo": 1.5}, ValueError, "max_halo"),
        ({"batch_size": True}, ValueError, "batch_size"),
        ({"level": -1}, ValueError, "level"),
        ({"min_area": -1}, ValueError, "min_area"),
        ({"connectivity": 3}, ValueError, "connectivity"),
        ({"lam": float("nan")}, ValueError, "lam must be a finite number"),
        ({"lam": -0.1}, ValueError, "lam must be >= 0"),
        ({"threshold": float("inf")}, ValueError, "threshold"),
        ({"mpp": 0}, ValueError, "mpp must be between"),
        ({"tissue": 3}, TypeError, "tissue"),
        ({"precision": "fp8"}, ValueError, "precision must be one of"),
        ({"reader": "vips"}, ValueError, "reader must be one of 'auto', 'openslide', 'tifffile', got 'vips'"),
        ({"resume": True, "overwrite": True}, ValueError, "exclusive"),
    ],
)
def test_invalid_options_are_refused_on_construction(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        RunOptions(**kwargs)


def test_values_are_normalised_and_frozen() -> None:
    o = RunOptions(tile=np.int64(256), min_area=np.int32(60), lam=np.float32(0.25), strict=1)
    assert (type(o.tile), type(o.min_area), type(o.lam), o.strict) == (int, int, float, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tile = 512  # type: ignore[misc]
    assert RunOptions(tissue=Path("m.png")).with_absolute_paths().tissue == str(Path("m.png").resolve())
    assert RunOptions().with_absolute_paths() == RunOptions()


def test_the_keywords_of_both_runners_are_the_options() -> None:
    """Every option has the same name and default in RunOptions and in the keyword forms of the
    two public runners; the internal steps take the object itself."""
    opts = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    for fn in (segment_slide, run_distributed):
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in opts} == opts, fn.__name__
    params = inspect.signature(prepare_output).parameters
    assert list(params) == ["reader", "pred", "output", "options", "skip_complete", "started"]  # no option fields


def test_options_object_and_keywords_give_the_same_store(tmp_path: Path, demo_image: np.ndarray) -> None:
    path = write_pyramid_tiff(tmp_path / "s.tif", demo_image[:256, :384], mpp=0.25, levels=1)
    kw = {"tile": 128, "halo": 32, "tissue": "none", "min_area": 40}
    segment_slide(path, tmp_path / "a.zarr", model="hematoxylin", **kw)
    segment_slide(path, tmp_path / "b.zarr", model="hematoxylin", options=RunOptions(**kw))
    a, b = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r") for n in "ab")
    np.testing.assert_array_equal(a["labels/nuclei/0"][...], b["labels/nuclei/0"][...])
    assert a.attrs["nucseg"]["settings"] == b.attrs["nucseg"]["settings"]
    with pytest.raises(TypeError, match="not both"):
        segment_slide(path, tmp_path / "c.zarr", model="hematoxylin", tile=256, options=RunOptions(**kw))
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        segment_slide(path, tmp_path / "c.zarr", model="hematoxylin", options=kw)  # type: ignore[arg-type]


def test_cli_defaults_are_the_run_options_defaults():
    """nucseg-wsi's flags, left alone, give RunOptions' defaults (tile, batch, reader...): the
    CLI documents the library's defaults, not other ones. Two spellings differ: the device
    ("auto" on the CLI, None in Python: the same choice) and the backend (the CLI picks ONNX
    Runtime when installed, the library stays on torch unless asked)."""
    from nucseg.cli.wsi import _options, build_parser

    got = _options(build_parser().parse_args(["slide.svs", "out.zarr"]))
    assert (got.backend, got.device) == ("auto", "auto")
    assert dataclasses.replace(got, backend="torch", device=None) == RunOptions()
