"""The ``nucseg segment`` command: help, one-line errors, per-file failures, summary, TNBC."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import nucseg
from nucseg.cli.main import main
from nucseg.wsi.demo import synthetic_he


def _png(path: Path, rgb: np.ndarray, mpp: float | None = 0.25) -> Path:
    Image.fromarray(rgb).save(path, **({"dpi": (25400 / mpp, 25400 / mpp)} if mpp else {}))
    return path


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("nucseg segment: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder with two small H&E-like PNGs at 0.25 um/px."""
    src = tmp_path / "in"
    src.mkdir()
    for seed in (1, 2):
        _png(src / f"img{seed}.png", synthetic_he((96, 128), seed=seed)[0])
    return src


def test_help_shows_examples(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--mpp 0.25" in out and "--resume" in out and "summary.csv" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "nucseg segment" in capsys.readouterr().out


def test_errors_are_one_line_before_any_work(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture, torch_one_thread
) -> None:
    out = tmp_path / "out"
    assert "no such file or folder" in _one_line_error(["segment", str(tmp_path / "nope"), "--out", str(out)], capsys)
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line_error(["segment", str(images), "--out", str(tmp_path / "file")], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _one_line_error(["segment", str(empty), "--out", str(out)], capsys)
    bare = _png(tmp_path / "bare.png", synthetic_he((64, 64), seed=4)[0], mpp=None)
    line = _one_line_error(["segment", str(images), str(bare), "--out", str(out), "--quiet"], capsys)
    assert "bare.png: no microns-per-pixel metadata" in line and line.endswith("pass --mpp")
    assert "between" in _one_line_error(["segment", str(images), "--out", str(out), "--mpp", "0"], capsys)
    assert not out.exists()

    assert main(["segment", str(images), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    line = _one_line_error(["segment", str(images), "--out", str(out), "--quiet"], capsys)
    assert "img1_labels.tif already exists" in line and "--resume" in line and "--overwrite" in line
    with pytest.raises(SystemExit) as exc:  # argparse: usage + one error line, status 2
        main(["segment", str(images), "--out", str(out), "--resume", "--overwrite"])
    assert exc.value.code == 2


def test_a_bad_file_is_reported_and_the_others_written(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture, torch_one_thread
) -> None:
    _png(images / "grey.png", synthetic_he((64, 64), seed=5)[0][..., 0])
    out = tmp_path / "out"
    assert main(["segment", str(images), "--out", str(out), "--csv", "--geojson", "--overlay"]) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].endswith(f"{images / 'grey.png'}: greyscale image; expected an RGB (H&E) image")
    assert "3 images: 2 segmented, 0 skipped, 1 failed" in err
    for stem in ("img1", "img2"):
        for suffix in ("_labels.tif", "_nuclei.csv", "_nuclei.geojson", "_overlay.png"):
            assert (out / f"{stem}{suffix}").is_file()
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert f"{images / stem}.png" in err  # the summary lists the image
        with open(out / f"{stem}_nuclei.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == np.unique(labels[labels > 0]).size
    assert not list(out.glob("grey*"))
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    assert rows["grey.png"]["status"] == "failed" and "greyscale" in rows["grey.png"]["error"]
    assert rows["img1.png"]["status"] == "done" and float(rows["img1.png"]["mean_area_um2"]) > 0

    # --resume retries only the failed image; --quiet leaves only its error line.
    assert main(["segment", str(images), "--out", str(out), "--csv", "--geojson", "--overlay", "--resume", "--quiet"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [errors[0]]


def test_formats_and_mpp_option(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture, torch_one_thread) -> None:
    rgb = synthetic_he((96, 128), seed=6)[0]
    Image.fromarray(rgb).save(images / "c.jpg", quality=95)
    out = tmp_path / "out"
    assert main(["segment", str(images), "--out", str(out), "--mpp", "0.25", "--format", "png", "--parquet", "--quiet"]) == 0
    import pyarrow.parquet as pq

    for stem in ("img1", "img2", "c"):
        with Image.open(out / f"{stem}_labels.png") as im:
            labels = np.asarray(im)
        assert pq.read_table(out / f"{stem}_nuclei.parquet").num_rows == np.unique(labels[labels > 0]).size
    from nucseg.batch import read_image

    expected = nucseg.segment(read_image(images / "c.jpg"), nucseg.load_model(device="cpu"), mpp=0.25)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "c_labels.png")), expected)


def test_tnbc_object_f1_equals_segment(tnbc_dir: Path, tmp_path: Path, torch_one_thread) -> None:
    from nucseg.data import mask_to_instances, read_rgb
    from nucseg.metrics import object_scores

    # Two real 512 x 512 crops (TNBC PNGs carry no resolution: 0.25 um/px at 40x).
    paths = sorted((tnbc_dir / "Slide_01").glob("*.png"))[:2]
    assert paths
    out = tmp_path / "out"
    assert main(["segment", *map(str, paths), "--out", str(out), "--mpp", "0.25", "--device", "cpu", "--quiet"]) == 0
    model = nucseg.load_model(device="cpu")
    for path in paths:
        with Image.open(tnbc_dir / "GT_01" / path.name) as im:
            gt = mask_to_instances(np.asarray(im) > 0)  # TNBC's 4-connected components
        ours = tifffile.imread(out / f"{path.stem}_labels.tif").astype(np.int32)
        direct = nucseg.segment(read_rgb(path), model, mpp=0.25)
        f_cli = object_scores(gt, ours).f1
        f_api = object_scores(gt, direct).f1
        assert f_cli == f_api and f_cli > 0.5, (path.name, f_cli, f_api)  # the trained model finds real nuclei


def test_backend_and_precision_reach_the_model(images: Path, tmp_path: Path, monkeypatch, torch_one_thread) -> None:
    # The flags are handed to load_model as nucseg-wsi hands them; a bad value is refused by argparse.
    import nucseg.inference as inference

    seen: list[tuple[str, str]] = []
    real = inference.load_model

    def spy(*args, **kwargs):
        seen.append((kwargs.get("backend"), kwargs.get("precision")))
        return real(*args, **{**kwargs, "backend": "torch"})  # the same network, whatever was asked

    monkeypatch.setattr(inference, "load_model", spy)
    out = tmp_path / "out"
    args = ["segment", str(images), "--out", str(out), "--mpp", "0.25", "--device", "cpu", "--quiet"]
    assert main([*args, "--backend", "openvino", "--precision", "bfloat16"]) == 0
    assert main([*args, "--overwrite"]) == 0
    assert seen == [("openvino", "bfloat16"), ("auto", "auto")]
    with pytest.raises(SystemExit):
        main([*args, "--backend", "ort"])


def test_a_bundled_model_is_chosen_by_name(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture, torch_one_thread) -> None:
    from nucseg.batch import read_image

    out = tmp_path / "out"
    assert main(["segment", str(images), "--out", str(out), "--model", "multiorgan", "--device", "cpu", "--quiet"]) == 0
    for stem in ("img1", "img2"):
        rgb = read_image(images / f"{stem}.png")
        expected = nucseg.segment(rgb, "multiorgan", mpp=0.25, device="cpu")
        assert expected.max() > 0
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}_labels.tif"), expected)
    line = _one_line_error(["segment", str(images), "--out", str(tmp_path / "o2"), "--model", "multiorgn"], capsys)
    assert "bundled model name" in line and "'multiorgn'" in line


def test_models_lists_each_bundled_model_with_its_data_and_licence(capsys: pytest.CaptureFixture) -> None:
    import json

    from nucseg.inference import BUNDLED_MODELS

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if not line.startswith(" ")]
    assert headers == ["default (used when no model is given)", *list(BUNDLED_MODELS)[1:]]
    assert "ensemble of: default, multiorgan (the mean of their outputs; 2x the network time)" in out
    for name, path in BUNDLED_MODELS.items():
        doc = json.loads(path.with_suffix(".json").read_text())
        assert f"{doc['licence']['spdx']}: {doc['licence']['terms']}" in out
        assert f"sha256 {doc['sha256'][:12]}" in out
    assert "trained on: tnbc, monuseg2018_train" in out and "trained on: tnbc\n" in out


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    # `nucseg models | head -1`: the reader leaves early; no "error: Broken pipe", status 141 as for SIGPIPE.
    import subprocess
    import sys

    code = (
        "import sys, argparse\n"
        "from nucseg.cli import run_guarded\n"
        "def run(args):\n"
        "    for i in range(200000): print('line', i)\n"
        "    return 0\n"
        "sys.exit(run_guarded(run, argparse.Namespace(), prog='nucseg x', errors=(OSError,), status=1, interrupted=''))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # the reader goes away
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == "", err
