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


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"bundled model weights not found at {WEIGHTS}")
def test_default_model_is_tile_size_invariant(demo_image: np.ndarray, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
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
    finally:
        torch.set_num_threads(threads)
