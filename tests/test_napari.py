"""The napari plugin (python/nucseg/napari): manifest, reader, *Segment nuclei* widget.

The reader's layer tuples are plain data and are tested without napari. The rest needs
napari, a Qt binding and pytest-qt (``pip install ".[napari-test]"``) and a display with
OpenGL: the ``gui_display`` fixture uses ``$DISPLAY`` when set, else starts its own
``Xvfb`` (Mesa's software OpenGL), else skips. ``NUCSEG_REQUIRE_GUI=1`` (set by CI) turns
those skips into failures, so CI cannot pass by silently skipping the GUI tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

MANIFEST = Path(__file__).resolve().parents[1] / "python" / "nucseg" / "napari" / "napari.yaml"

# Run in a fresh interpreter: a Qt platform plugin that cannot load aborts the process.
_GL_PROBE = """
import sys
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import QApplication
app = QApplication([])
ctx, surface = QOpenGLContext(), QOffscreenSurface()
surface.create()
if not (ctx.create() and ctx.makeCurrent(surface)):
    sys.exit("Qt could not create an OpenGL context")
print(app.platformName(), ctx.functions().glGetString(0x1F01))  # GL_RENDERER
"""


#: The Xvfb this session started (ended by the kernel when pytest exits).
_SERVERS: list[subprocess.Popen] = []


def _unavailable(reason: str) -> None:
    """Skip, or fail where the GUI tests are required (CI sets NUCSEG_REQUIRE_GUI=1)."""
    if os.environ.get("NUCSEG_REQUIRE_GUI") == "1":
        pytest.fail(f"{reason} (NUCSEG_REQUIRE_GUI=1 requires the napari tests to run)")
    pytest.skip(reason)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when pytest exits (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _start_xvfb() -> tuple[subprocess.Popen, str]:
    """Start Xvfb on a free display number (it reports the number it took on a pipe).

    The server outlives the session's fixtures: Qt's application object lives until the
    interpreter exits and aborts if its X server goes first, so Xvfb is ended by the
    kernel when pytest exits instead.
    """
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        proc.wait()
        raise RuntimeError("Xvfb did not start")
    return proc, f":{number}"


@pytest.fixture(scope="session")
def gui_display() -> Iterator[str]:
    """An X display with OpenGL for napari (``$DISPLAY`` or a private Xvfb); skips without."""
    for module in ("napari", "pytestqt", "qtpy"):
        try:
            __import__(module)
        except ImportError as exc:
            _unavailable(f"napari GUI tests need {module}: {exc}")
    proc = None
    env = {"QT_QPA_PLATFORM": "xcb"}  # vispy gets no GL context under "offscreen"
    if not os.environ.get("DISPLAY"):
        if shutil.which("Xvfb") is None:
            _unavailable("no $DISPLAY and no Xvfb on PATH (Debian/Ubuntu: apt-get install xvfb)")
        proc, display = _start_xvfb()
        _SERVERS.append(proc)  # referenced until exit, not garbage-collected while running
        env |= {"DISPLAY": display, "LIBGL_ALWAYS_SOFTWARE": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", _GL_PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        if proc is not None:
            proc.kill()
            proc.wait()
        _unavailable(f"no usable Qt/OpenGL display: {(probe.stderr or probe.stdout).strip()[-400:]}")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env.get("DISPLAY", os.environ["DISPLAY"])


@pytest.fixture(scope="session")
def nucseg_plugin(gui_display: str) -> None:
    """The plugin's manifest registered with npe2 (an installed nucseg registers itself
    through its entry point; a source checkout on PYTHONPATH does not)."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "nucseg" not in pm:
        pm.register(PluginManifest.from_file(MANIFEST))


@pytest.fixture
def viewer(gui_display: str, nucseg_plugin: None, request: pytest.FixtureRequest):
    """A napari viewer, closed after the test (napari's ``make_napari_viewer``).

    Shown (on the test display): a hidden viewer's canvas renders black screenshots.
    """
    return request.getfixturevalue("make_napari_viewer")(show=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished nucseg-wsi store of a 600 x 700 synthetic slide (0.25 um/px, 3 label levels)."""
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

    root = tmp_path_factory.mktemp("napari")
    rgb, _, _ = synthetic_he((600, 700), seed=1)
    slide = write_pyramid_tiff(root / "demo.tif", rgb, mpp=0.25, levels=2)
    segment_slide(slide, root / "demo.zarr", model="hematoxylin", tile=256, halo=64, tissue="none")
    return root / "demo.zarr"


# -- manifest -----------------------------------------------------------------------------


def test_manifest_is_valid_and_its_commands_import() -> None:
    npe2 = pytest.importorskip("npe2")
    pytest.importorskip("magicgui")
    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "nucseg"
    assert {c.id for c in pm.contributions.commands} == {"nucseg.get_reader", "nucseg.segment_widget"}
    pm.validate_imports()  # every python_name resolves
    assert pm.contributions.readers[0].accepts_directories


def test_manifest_entry_point_and_wheel() -> None:
    """pyproject registers the manifest where napari looks (``napari.manifest``)."""
    text = (MANIFEST.parents[3] / "pyproject.toml").read_text()
    assert '[project.entry-points."napari.manifest"]' in text
    assert 'nucseg = "nucseg.napari:napari.yaml"' in text
    assert 'wheel.packages = ["python/nucseg"]' in text  # ships every file under python/nucseg


# -- reader (no napari needed) --------------------------------------------------------------


def test_reader_claims_only_nucseg_stores(store: Path, tmp_path: Path) -> None:
    from nucseg.napari._reader import get_reader, read_store

    assert get_reader(str(store)) is read_store
    assert get_reader([str(store)]) is read_store
    assert get_reader(str(store.parent / "demo.tif")) is None
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader([str(store), str(store)]) is None


def test_reader_layers_are_lazy_and_in_micrometres(store: Path) -> None:
    pytest.importorskip("pandas")  # the features table (napari itself requires pandas)
    import dask.array as da
    import zarr

    from nucseg.napari._reader import read_store

    (image, ikw, itype), (labels, lkw, ltype) = read_store(str(store))
    assert (itype, ltype) == ("image", "labels")
    assert ikw["rgb"] and ikw["multiscale"] and lkw["multiscale"]
    assert all(isinstance(a, da.Array) for a in (*image, *labels))
    assert [a.shape for a in labels] == [(600, 700), (300, 350), (150, 175)]
    assert image[0].shape == (*labels[0].shape, 3) and image[0].dtype == np.uint8
    assert ikw["scale"] == lkw["scale"] == (0.25, 0.25)
    assert ikw["translate"] == lkw["translate"] == (0.0, 0.0)
    # The arrays are the store's, pixel for pixel.
    stored = zarr.open_array(str(store / "labels" / "nuclei" / "0"), mode="r")[:]
    assert np.array_equal(labels[0].compute(), stored)
    assert np.array_equal(np.moveaxis(image[0].compute(), 2, 0), zarr.open_array(str(store / "0"), mode="r")[:])
    features = lkw["features"]
    ids = np.unique(stored[stored > 0])
    assert np.array_equal(np.sort(features["index"].to_numpy()), ids)
    assert np.array_equal(features["index"].to_numpy(), features["label"].to_numpy())
    assert {"area_um2", "perimeter_um", "hematoxylin_od"} <= set(features.columns)


def test_reader_skips_a_table_too_large_for_features(store: Path) -> None:
    from nucseg.export.result import open_result
    from nucseg.napari._reader import labels_layer

    _, kwargs, _ = labels_layer(open_result(store), max_rows=3)
    assert "features" not in kwargs
    assert kwargs["metadata"]["nucseg_table"].endswith("nuclei.parquet")


def test_reader_refuses_a_half_finished_store(store: Path, tmp_path: Path) -> None:
    from nucseg.export.result import ResultError
    from nucseg.napari._reader import get_reader

    copy = tmp_path / "running.zarr"
    shutil.copytree(store, copy)
    doc = json.loads((copy / "zarr.json").read_text())
    doc["attributes"]["nucseg"]["status"] = "running"
    (copy / "zarr.json").write_text(json.dumps(doc))
    reader = get_reader(str(copy))
    assert reader is not None  # claimed: it is ours, and the error says how to finish it
    with pytest.raises(ResultError, match="--resume"):
        reader(str(copy))


# -- widget helpers (no GUI) --------------------------------------------------------------


def test_layer_rgb_converts_and_refuses() -> None:
    pytest.importorskip("magicgui")
    from nucseg.napari._widget import layer_rgb

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 7
    out = layer_rgb(rgba, rgb=True, multiscale=False)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out[..., 0] == 7).all()
    assert layer_rgb(np.ones((4, 5, 3)), rgb=True, multiscale=False).max() == 255
    assert layer_rgb([np.full((4, 5, 3), 9, np.uint16), None], rgb=True, multiscale=True).max() == 9
    with pytest.raises(ValueError, match="RGB"):
        layer_rgb(np.zeros((4, 5)), rgb=False, multiscale=False, name="gray")
    with pytest.raises(ValueError, match="0..255"):
        layer_rgb(np.full((4, 5, 3), 300, np.uint16), rgb=True, multiscale=False)


# -- in napari ----------------------------------------------------------------------------


def test_viewer_opens_store_with_the_plugin(viewer, store: Path) -> None:
    import napari.layers

    layers = viewer.open(str(store), plugin="nucseg")
    image, labels = layers
    assert isinstance(image, napari.layers.Image) and image.rgb and image.multiscale
    assert isinstance(labels, napari.layers.Labels) and labels.multiscale
    assert np.allclose(image.scale, (0.25, 0.25)) and np.allclose(labels.scale, (0.25, 0.25))
    assert str(labels.units[0]) == "micrometer"
    # Overlaid: the same extent in world (micrometre) coordinates.
    assert np.allclose(image.extent.world, labels.extent.world)
    assert len(labels.features) == len(np.unique(np.asarray(labels.data[0]))) - 1


def test_widget_adds_the_labels_of_segment(viewer, qtbot) -> None:
    import nucseg
    from nucseg.wsi.demo import synthetic_he

    rgb, _, _ = synthetic_he((256, 320), seed=3, tissue_fraction=1.0)
    image = viewer.add_image(rgb, name="he")
    _, widget = viewer.window.add_plugin_dock_widget("nucseg", "Segment nuclei")
    widget._image.value = image
    widget._device.value = "cpu"
    widget._mpp.value = 0.3  # not the model's 0.25: the image is resampled for the network
    params = widget.params()
    assert widget.run() is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=120_000)
    labels = viewer.layers["he nuclei"]
    expected = nucseg.segment(rgb, lam=params.lam, threshold=params.threshold, mpp=0.3, device="cpu")
    assert expected.max() > 5  # the test means something only if nuclei were found
    assert np.array_equal(labels.data, expected)
    assert np.allclose(labels.scale, (0.3, 0.3)) and np.allclose(image.scale, (0.3, 0.3))
    features = labels.features
    assert len(features) == expected.max()  # labels are 1..N
    assert np.array_equal(features["index"], np.arange(1, expected.max() + 1))
    areas = np.bincount(expected.ravel())[1:] * 0.3**2
    assert np.allclose(features["area_um2"], areas)
    assert features["hematoxylin_od"].between(0, 3).all() and features["mean_prob"].between(0, 1).all()


def test_widget_runs_the_chosen_bundled_model(viewer, qtbot) -> None:
    import nucseg
    from nucseg.napari._widget import model_defaults
    from nucseg.wsi.demo import synthetic_he

    rgb, _, _ = synthetic_he((256, 320), seed=3, tissue_fraction=1.0)
    image = viewer.add_image(rgb, name="he")
    _, widget = viewer.window.add_plugin_dock_widget("nucseg", "Segment nuclei")
    assert list(widget._model.choices) == ["default", "multiorgan", "default+multiorgan"] and widget._model.value == "default"
    widget._image.value = image
    widget._device.value = "cpu"
    widget._lam.value = 0.5  # a user's edit; choosing a model shows that model's recipe
    widget._model.value = "multiorgan"
    d = model_defaults("multiorgan")
    assert (widget._lam.value, widget._threshold.value) == pytest.approx((d["lam"], d["threshold"]))
    params = widget.params()
    assert params.model == "multiorgan"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=120_000)
    labels = viewer.layers["he nuclei"]
    expected = nucseg.segment(rgb, "multiorgan", mpp=params.mpp, device="cpu")
    assert expected.max() > 5
    assert np.array_equal(labels.data, expected)
    assert labels.metadata["nucseg_params"]["model"] == "multiorgan"


def test_screenshot_shows_the_labels(viewer, store: Path, tmp_path: Path) -> None:
    image, labels = viewer.open(str(store), plugin="nucseg")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert shot.std() > 20, "the screenshot is (nearly) blank"
    # The labels alone, opaque: their colours must be drawn.
    image.visible = False
    labels.opacity = 1.0
    only = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    ids = labels.features["index"].to_numpy()[:40]
    colours = np.rint(np.array([labels.get_color(i)[:3] for i in ids]) * 255).astype(int)
    present = [np.any(np.abs(only - c).max(axis=-1) <= 3) for c in colours]
    assert np.mean(present) > 0.5, f"only {sum(present)} of {len(present)} label colours are on screen"
    if os.environ.get("NUCSEG_NAPARI_SCREENSHOT"):  # kept for the README by scripts, if asked
        from PIL import Image

        Image.fromarray(shot.astype(np.uint8)).save(os.environ["NUCSEG_NAPARI_SCREENSHOT"])


def test_widget_takes_mpp_from_a_calibrated_layer_and_refuses_grey(viewer) -> None:
    from nucseg.napari._widget import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    grey = viewer.add_image(np.zeros((32, 32), np.uint8), name="grey", scale=(0.2527, 0.2527))
    widget.reset_choices()
    widget._image.value = grey
    assert widget._mpp.value == pytest.approx(0.2527, abs=1e-3)  # the layer's scale, in um
    assert widget.run() is None and widget.worker is None
    assert "RGB" in widget._status.value
    assert len(viewer.layers) == 1
