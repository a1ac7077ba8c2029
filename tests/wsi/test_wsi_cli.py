"""The nucseg-wsi command: help, one-line errors, --demo, kill -9 then --resume, real model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import nucseg
from nucseg.cli.wsi import main
from nucseg.wsi import segment_slide
from nucseg.wsi.demo import write_pyramid_tiff
from wsi_helpers import matched_fraction, same_partition

HERE = Path(__file__).resolve().parent
WEIGHTS = Path(nucseg.__file__).parent / "models" / "weights" / "default.safetensors"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The subprocess must import this checkout's nucseg and the test helpers.
    paths = [str(HERE), str(Path(nucseg.__file__).resolve().parents[1])]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nucseg.cli.wsi", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def test_help_shows_examples(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--demo" in out and "--resume" in out


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("nucseg-wsi: error: ") and "Traceback" not in err[0]
    return err[0]


def test_user_errors_are_one_line(tmp_path: Path, demo_image: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "o.zarr")
    assert "slide not found" in _one_line_error([str(tmp_path / "missing.svs"), out], capsys)
    text = tmp_path / "readme.svs"
    text.write_text("hello\n")
    assert "not a slide" in _one_line_error([str(text), out], capsys)
    nompp = write_pyramid_tiff(tmp_path / "nompp.tif", demo_image[:128, :128], mpp=None, levels=1)
    assert "pass --mpp" in _one_line_error([str(nompp), out, "--model", "hematoxylin"], capsys)
    assert "between" in _one_line_error([str(nompp), out, "--mpp", "0"], capsys)
    assert not Path(out).exists()
    assert main([str(nompp), out, "--mpp", "0.25", "--model", "hematoxylin", "--quiet", "--tile", "64"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: nothing at all
    assert "already exists" in _one_line_error([str(nompp), out, "--mpp", "0.25", "--model", "hematoxylin"], capsys)
    with pytest.raises(SystemExit):
        main([str(nompp), out, "--resume", "--overwrite"])


def test_geojson_checked_before_and_written_after_the_run(
    tmp_path: Path, demo_image: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    import json

    import pyarrow.parquet as pq

    from nucseg.morphometrics import TABLE_COLUMNS

    slide = str(write_pyramid_tiff(tmp_path / "s.tif", demo_image[:256, :320], mpp=0.25, levels=1))
    out, geo = tmp_path / "o.zarr", tmp_path / "nuclei.geojson"
    base = [slide, str(out), "--model", "hematoxylin", "--tile", "128", "--tissue", "none", "--threads", "1"]
    # Refused before any work: no store is created.
    err = _one_line_error([*base, "--geojson", str(tmp_path / "no" / "n.geojson")], capsys)
    assert "destination folder" in err and "does not exist" in err and not out.exists()
    geo.write_text("keep me")
    err = _one_line_error([*base, "--geojson", str(geo)], capsys)
    assert "already exists; pass --overwrite" in err and not out.exists() and geo.read_text() == "keep me"
    with pytest.raises(SystemExit):
        main([slide, "--out-dir", str(tmp_path / "batch"), "--geojson", str(geo)])
    assert capsys.readouterr().err.count("--geojson works for one slide") == 1

    assert main([*base, "--geojson", str(geo), "--overwrite"]) == 0
    err = capsys.readouterr().err
    table = pq.read_table(out / "nucseg" / "nuclei.parquet")
    assert f"geojson: {table.num_rows} nuclei -> {geo}" in err and table.num_rows > 50
    doc = json.loads(geo.read_text())
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection" and len(feats) == table.num_rows
    assert sorted(f["properties"]["nucleus_id"] for f in feats) == sorted(table.column("label").to_pylist())
    # The table's morphometrics travel with each nucleus into QuPath.
    row = {lab: k for k, lab in enumerate(table.column("label").to_pylist())}
    for f in feats[:20]:
        m, k = f["properties"]["measurements"], row[f["properties"]["nucleus_id"]]
        for c in (*TABLE_COLUMNS, "area_um2"):
            assert m[c] == pytest.approx(table.column(c)[k].as_py(), rel=1e-5, abs=1e-6), c

    # --resume cannot take --overwrite: an existing GeoJSON is refused with a way out.
    err = _one_line_error([*base, "--resume", "--geojson", str(geo)], capsys)
    assert "remove it or choose another file" in err
    again = tmp_path / "again.geojson"
    assert main([*base, "--resume", "--quiet", "--geojson", str(again)]) == 0
    assert json.loads(again.read_text()) == doc and capsys.readouterr().err == ""


def test_qc_in_a_batch_and_on_dask(tmp_path: Path, demo_image: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    """--qc with --out-dir is a folder of NAME_qc.png; on a local Dask cluster the picture
    is the single-process one, byte for byte."""
    pytest.importorskip("distributed")
    a = str(write_pyramid_tiff(tmp_path / "a.tif", demo_image[:256, :384], mpp=0.25, levels=1))
    b = str(write_pyramid_tiff(tmp_path / "b.tif", demo_image[256:512, :256], mpp=0.25, levels=1))
    opts = ["--model", "hematoxylin", "--tile", "128", "--tissue", "none", "--threads", "1", "--quiet"]
    assert main([a, b, "--out-dir", str(tmp_path / "res"), "--qc", str(tmp_path / "qc"), *opts]) == 0
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["a_qc.png", "b_qc.png"]
    assert main([a, str(tmp_path / "d.zarr"), "--workers", "1", "--qc", str(tmp_path / "d_qc.png"), *opts]) == 0
    assert (tmp_path / "d_qc.png").read_bytes() == (tmp_path / "qc" / "a_qc.png").read_bytes()
    # A QC folder that does not exist is refused before the run.
    err = _one_line_error([a, str(tmp_path / "e.zarr"), "--qc", str(tmp_path / "no" / "q.png"), *opts], capsys)
    assert "QC folder does not exist" in err and not (tmp_path / "e.zarr").exists()


def test_demo_runs_on_a_fresh_machine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo.zarr"
    assert main(["--demo", str(out), "--model", "hematoxylin", "--tile", "512", "--qc", str(tmp_path / "qc.png")]) == 0
    err = capsys.readouterr().err
    assert "nuclei:" in err and "stage time" in err
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["nucseg"]["status"] == "complete"
    assert root.attrs["nucseg"]["nuclei"] > 1000
    assert (tmp_path / "demo_slide.tif").is_file()
    from PIL import Image

    # Overview (level 1 of the 2048 px demo: 1024 px) with outlines | gap | density map.
    qc = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB"))
    assert qc.shape == (1024, 2 * 1024 + 8, 3)
    outline = (qc[:, :1024] == (0, 200, 0)).all(axis=2)
    assert outline.mean() > 0.01


def test_kill_9_then_resume_equals_an_uninterrupted_run(demo_slide: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed.zarr"
    args = [str(demo_slide), str(killed), "--model", "wsi_helpers:make_slow", "--tile", "128", "--halo", "64"]
    args += ["--tissue", "none", "--threads", "1", "--batch-size", "1", "--save-prob", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "nucseg.cli.wsi", *args], env=_env(), stderr=subprocess.PIPE)
    records = killed / "nucseg" / "tiles"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    n_done = len(list(records.glob("*.json")))
    assert 4 <= n_done < 80
    assert zarr.open_group(str(killed), mode="r").attrs["nucseg"]["status"] == "running"

    # The slow predictor has the hematoxylin predictor's config and checksum: resume with the fast one.
    s = segment_slide(
        demo_slide, killed, model="hematoxylin", tile=128, halo=64, tissue="none", save_prob=True, resume=True
    )
    assert s.tiles_resumed >= n_done and s.tiles_run == 80 - s.tiles_resumed
    ref = tmp_path / "ref.zarr"
    segment_slide(demo_slide, ref, model="hematoxylin", tile=128, halo=64, tissue="none", save_prob=True)
    for name in ("labels/nuclei/0", "labels/nuclei/1", "labels/nuclei/2", "prob/0"):
        a = zarr.open_array(str(ref / name), mode="r")[...]
        b = zarr.open_array(str(killed / name), mode="r")[...]
        np.testing.assert_array_equal(a, b, err_msg=name)
    import pyarrow.parquet as pq

    assert pq.read_table(ref / "nucseg" / "nuclei.parquet").equals(pq.read_table(killed / "nucseg" / "nuclei.parquet"))


needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"bundled model weights not found at {WEIGHTS}")


@needs_weights
@pytest.mark.usefixtures("torch_one_thread")
def test_default_model_is_tile_size_invariant(demo_image: np.ndarray, tmp_path: Path) -> None:
    from nucseg.inference import load_model

    model = load_model(device="cpu")
    rgb = demo_image[:768, :768]
    path = write_pyramid_tiff(tmp_path / "s.tif", rgb, mpp=0.25, levels=1)
    whole = nucseg.segment(rgb, model)
    outs = []
    for tile in (256, 512):
        s = segment_slide(path, tmp_path / f"{tile}.zarr", model=model, tile=tile, tissue="none")
        assert s.nuclei > 0
        outs.append(zarr.open_array(str(tmp_path / f"{tile}.zarr" / "labels/nuclei/0"), mode="r")[...])
    assert matched_fraction(outs[0], whole) >= 0.99 and matched_fraction(whole, outs[0]) >= 0.99
    assert matched_fraction(outs[1], whole) >= 0.99 and matched_fraction(whole, outs[1]) >= 0.99
    assert same_partition(outs[0], outs[1]) or matched_fraction(outs[0], outs[1]) >= 0.99


@needs_weights
@pytest.mark.usefixtures("torch_one_thread")
def test_precision_option_reaches_the_network(demo_image: np.ndarray, tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "s.tif", demo_image[:512, :512], mpp=0.25, levels=1)
    outs = {}
    for precision in ("auto", "bfloat16"):
        out = tmp_path / f"{precision}.zarr"
        args = [str(path), str(out), "--device", "cpu", "--precision", precision, "--tissue", "none", "--quiet"]
        assert main(args) == 0
        root = zarr.open_group(str(out), mode="r")
        assert root.attrs["nucseg"]["model"]["precision"] == precision
        outs[precision] = root["labels/nuclei/0"][...]
    # bfloat16 moves a few boundary pixels, not the nuclei.
    assert matched_fraction(outs["bfloat16"], outs["auto"], iou=0.5) >= 0.97
    with pytest.raises(SystemExit) as exc:  # argparse: usage line and exit status 2
        main([str(path), str(tmp_path / "x.zarr"), "--precision", "fp8"])
    assert exc.value.code == 2 and not (tmp_path / "x.zarr").exists()


def test_reader_flag_reaches_the_slide_reader(demo_image: np.ndarray, tmp_path: Path) -> None:
    """--reader picks what decodes the slide (recorded in the run metadata); the labels are the
    same, and a resume with the other reader is accepted (the reader is not a store setting)."""
    from nucseg.cli.wsi import _options, build_parser
    from nucseg.wsi.demo import write_tiled_slide

    pytest.importorskip("imagecodecs", reason="the JPEG slide is written and read with imagecodecs")
    path = write_tiled_slide(tmp_path / "s.svs", demo_image[:512, :640], compression="jpeg", mpp=0.25, levels=2)
    assert _options(build_parser().parse_args([str(path), "o.zarr"])).reader == "auto"
    labels = {}
    for reader in ("openslide", "tifffile"):
        out = tmp_path / f"{reader}.zarr"
        args = [str(path), str(out), "--model", "hematoxylin", "--tissue", "none", "--reader", reader, "--quiet"]
        assert main(args) == 0
        root = zarr.open_group(str(out), mode="r")
        assert root.attrs["nucseg"]["slide"]["backend"] == reader
        labels[reader] = root["labels/nuclei/0"][...]
    np.testing.assert_array_equal(labels["openslide"], labels["tifffile"])
    assert labels["tifffile"].max() > 0
    resumed = [str(path), str(tmp_path / "openslide.zarr"), "--model", "hematoxylin", "--tissue", "none",
               "--reader", "tifffile", "--resume", "--quiet"]
    assert main(resumed) == 0
    with pytest.raises(SystemExit) as exc:  # argparse: usage line and exit status 2
        main([str(path), str(tmp_path / "x.zarr"), "--reader", "vips"])
    assert exc.value.code == 2 and not (tmp_path / "x.zarr").exists()
