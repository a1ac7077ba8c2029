"""Make the README's napari screenshot (docs/img/napari.png) from a synthetic slide.

Segments nucseg's synthetic demo slide with the bundled model (``segment_slide``), opens
the store with the plugin's reader, docks the *Segment nuclei* widget and saves a
screenshot of the window, downscaled and palette-quantised to stay small. Needs the
``napari`` extra and a display; headless, under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb PYTHONPATH=python \\
        python3 scripts/napari_screenshot.py docs/img/napari.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

MANIFEST = Path(__file__).resolve().parents[1] / "python" / "nucseg" / "napari" / "napari.yaml"


def register_plugin() -> None:
    """Register the manifest with npe2 when nucseg is not installed (a source checkout)."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "nucseg" not in pm:
        pm.register(PluginManifest.from_file(MANIFEST))


def make_store(folder: Path) -> Path:
    """A 1024 x 1280 synthetic slide at 0.25 um/px, segmented by the bundled model."""
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

    rgb, _, _ = synthetic_he((1024, 1280), seed=1)
    slide = write_pyramid_tiff(folder / "demo.tif", rgb, mpp=0.25, levels=2)
    segment_slide(slide, folder / "demo.zarr", tile=512, device="cpu")
    return folder / "demo.zarr"


def main(out: str) -> None:
    import napari
    from PIL import Image

    register_plugin()
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp))
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 900)
        viewer.open(str(store), plugin="nucseg")
        viewer.window.add_plugin_dock_widget("nucseg", "Segment nuclei")
        viewer.layers["nuclei"].opacity = 0.6
        # napari 0.9 moved these; the old names still work there, and are the only ones before.
        scale_bar = viewer.canvas.overlays.scale_bar if hasattr(viewer, "canvas") else viewer.scale_bar
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
        scale_bar.visible = True
        viewer.reset_view()
        camera.zoom *= 1.6
        napari.qt.get_qapp().processEvents()  # lay the dock widget out before the grab
        shot = viewer.screenshot(canvas_only=False, flash=False)
        viewer.close()
    img = Image.fromarray(shot[..., :3])
    img = img.resize((1000, round(1000 * img.height / img.width)), Image.LANCZOS)
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({Path(out).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img/napari.png")
