"""Slide readers side by side: OpenSlide, nucseg's tifffile reader, tiffslide, pyvips.

Used by ``benchmarks/bench_wsi.py`` (``test_readers``) and runnable alone for the table
of docs/SCALING.md ("Slide reading")::

    PYTHONPATH=python python benchmarks/_readers.py [SIDE] [--svs PATH]

Each reader reads the runner's read boxes (a 1024 px core with its 104 px halo: 1232 px
boxes on a 1024 px grid, row-major, as ``segment_slide`` requests them at the default
tile) of one level, with 1 thread, 2 threads sharing one handle, and 2 threads with a
handle each. Figures: Mpix/s of wall time, the ratio to OpenSlide measured in the same
run, and the largest absolute difference from OpenSlide's pixels on the same boxes.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

CORE, HALO = 1024, 104
#: Reader name -> opener: ``open(path) -> (read(level, x, y, w, h) -> RGB, close())``.
Opener = Callable[[Path], tuple[Callable[[int, int, int, int, int], np.ndarray], Callable[[], None]]]


def boxes(width: int, height: int, limit: int | None = None) -> list[tuple[int, int, int, int]]:
    """The runner's read boxes ``(x, y, w, h)`` of a level, clipped to it, row-major."""
    out = []
    for y in range(0, height, CORE):
        for x in range(0, width, CORE):
            x0, y0 = max(0, x - HALO), max(0, y - HALO)
            out.append((x0, y0, min(width, x + CORE + HALO) - x0, min(height, y + CORE + HALO) - y0))
    return out[:limit]


def level_size(path: Path, level: int) -> tuple[int, int]:
    """``(width, height)`` of a level of a TIFF slide (tifffile lists the levels as OpenSlide does)."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        shape = tif.series[0].levels[level].shape
    return shape[1], shape[0]


def _nucseg(kind: str) -> Opener:
    def open_(path: Path):
        from nucseg.wsi.reader import OpenSlideReader, TiffReader

        r = OpenSlideReader(path) if kind == "openslide" else TiffReader(path)
        return r.read, r.close

    return open_


def _tiffslide(path: Path):
    import tiffslide

    s = tiffslide.TiffSlide(str(path))
    ds = [d for d in s.level_downsamples]

    def read(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        d = ds[level]
        rgb = s.read_region((round(x * d), round(y * d)), level, (w, h), as_array=True)
        return np.ascontiguousarray(rgb[..., :3])

    return read, s.close


def _pyvips(path: Path):
    import pyvips
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:  # the levels are the tiled pages, in order
        pages = [i for i, p in enumerate(tif.pages) if p.is_tiled]
    pyvips.cache_set_max(0)  # libvips' operation cache would hand back decoded pixels of an earlier run
    images = [pyvips.Image.new_from_file(str(path), page=i, access="random") for i in pages]
    local = threading.local()  # a Region is not shared between threads

    def read(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        regions = getattr(local, "regions", None)
        if regions is None:
            regions = local.regions = {}
        if level not in regions:
            regions[level] = pyvips.Region.new(images[level])
        buf = regions[level].fetch(x, y, w, h)
        return np.frombuffer(buf, np.uint8).reshape(h, w, images[level].bands)[..., :3]

    return read, lambda: None


def _openslide_raw(path: Path):
    import openslide

    s = openslide.OpenSlide(str(path))
    ds = s.level_downsamples

    def read(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        d = ds[level]  # premultiplied RGBA as OpenSlide returns it: the cost before nucseg's compositing
        return np.asarray(s.read_region((round(x * d), round(y * d)), level, (w, h)))[..., :3]

    return read, s.close


READERS: dict[str, Opener] = {
    "openslide": _nucseg("openslide"),
    "openslide-raw": _openslide_raw,
    "tifffile": _nucseg("tifffile"),
    "tiffslide": _tiffslide,
    "pyvips": _pyvips,
}


def available(name: str) -> str | None:
    """None when reader ``name`` can run here, else why not."""
    mod = {"tiffslide": "tiffslide", "pyvips": "pyvips", "tifffile": "imagecodecs"}.get(name)
    if mod is None:
        return None
    try:
        __import__(mod)
    except (ImportError, OSError) as exc:  # pyvips raises OSError without libvips
        return f"{mod}: {exc}"
    return None


def measure(name: str, path: Path, level: int, work: list[tuple[int, int, int, int]], threads: int,
            shared: bool) -> float:
    """Mpix/s of reading ``work`` at ``level`` with ``threads`` threads (one handle, or one each)."""
    opener = READERS[name]
    handles = [opener(path)] if shared else [opener(path) for _ in range(threads)]
    nxt = iter(range(len(work)))
    lock = threading.Lock()

    def run(read: Callable[..., np.ndarray]) -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            x, y, w, h = work[i]
            read(level, x, y, w, h)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=run, args=(handles[0 if shared else k][0],)) for k in range(threads)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    for _, close in {id(h): h for h in handles}.values():
        close()
    return sum(w * h for _, _, w, h in work) / 1e6 / wall


def max_diff(name: str, ref: str, path: Path, level: int, work: list[tuple[int, int, int, int]]) -> int:
    """Largest absolute pixel difference between two readers on ``work``."""
    a_read, a_close = READERS[name](path)
    b_read, b_close = READERS[ref](path)
    try:
        return max(
            int(np.abs(a_read(level, *box).astype(np.int16) - b_read(level, *box)).max()) for box in work
        )
    finally:
        a_close()
        b_close()


def compare(path: Path, level: int, limit: int | None, readers: list[str] | None = None,
            modes: tuple[tuple[int, bool], ...] = ((1, True), (2, True), (2, False))) -> Iterator[dict]:
    """One row per reader and thread mode: Mpix/s, ratio to OpenSlide and pixel difference."""
    from nucseg.wsi.reader import OpenSlideReader, SlideError

    try:
        OpenSlideReader(path).close()
        has_openslide = True
    except SlideError:
        has_openslide = False
    work = boxes(*level_size(path, level), limit)
    names = [n for n in (readers or list(READERS))
             if available(n) is None and (has_openslide or not n.startswith("openslide"))]
    ref = "openslide" if has_openslide else "tifffile"  # a format only tifffile reads: tiffslide, pyvips against it
    diffs: dict[str, object] = {}
    for n in names:
        try:
            diffs[n] = max_diff(n, ref, path, level, work[:3]) if n != ref else 0
        except Exception as exc:  # a reader that cannot decode this compression
            diffs[n] = f"fails: {type(exc).__name__}: {str(exc)[:60]}"
    base: dict[tuple[int, bool], float] = {}
    for threads, shared in modes:
        for n in names:
            if isinstance(diffs[n], str) and diffs[n].startswith("fails"):
                yield {"reader": n, "threads": threads, "shared": shared, "mpix_s": math.nan, "ratio": math.nan,
                       "max_diff": diffs[n]}
                continue
            mps = measure(n, path, level, work, threads, shared)
            if n == "openslide":
                base[(threads, shared)] = mps
            b = base.get((threads, shared))
            yield {"reader": n, "threads": threads, "shared": shared, "mpix_s": mps,
                   "ratio": mps / b if b else math.nan, "max_diff": diffs[n], "diff_vs": ref,
                   "box": max(max(w, h) for _, _, w, h in work), "boxes": len(work), "level": level}


def child(path: str, level: int, name: str, threads: int, shared: bool, limit: int) -> dict:
    """One measurement in a fresh process (``--child``): Mpix/s and this process's peak RSS."""
    from _rss import peak_rss_bytes

    work = boxes(*level_size(Path(path), level), limit)
    measure(name, Path(path), level, work[:1], 1, True)  # imports and first calls paid before the clock
    mps = measure(name, Path(path), level, work, threads, shared)
    return {"mpix_s": mps, "mpix": sum(w * h for _, _, w, h in work) / 1e6, "boxes": len(work),
            "box": max(max(w, h) for _, _, w, h in work), "peak_rss_mb": peak_rss_bytes() / 2**20}


def _main(argv: list[str]) -> None:
    from nucseg.wsi.demo import synthetic_he, write_tiled_slide

    side = int(argv[0]) if argv and argv[0].isdigit() else 8192
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "nucseg_readers"
    root.mkdir(exist_ok=True)
    slides: list[tuple[str, Path]] = []
    if "--svs" in argv:
        slides.append(("real SVS (JPEG)", Path(argv[argv.index("--svs") + 1])))
    base = min(side, 2048)  # a 2048 px synthetic image repeated: the decoders' work, without minutes of drawing
    img, _, _ = synthetic_he((base, base), seed=7, spacing=34.0)
    rgb = np.tile(img, (side // base, side // base, 1))
    for layout, comp in (("aperio", "jpeg"), ("aperio", "aperio-j2k-ycbcr"), ("aperio", "aperio-j2k-rgb"),
                         ("generic", "jpeg"), ("generic", "jpeg2000"), ("generic", "deflate")):
        path = root / f"{layout}-{comp}-{side}.{'svs' if layout == 'aperio' else 'tif'}"
        if not path.exists():
            write_tiled_slide(path, rgb, compression=comp, layout=layout, levels=4, tile=256)
        slides.append((f"{layout} {comp}", path))
    print(f"load {os.getloadavg()}  cpus {os.cpu_count()}")
    for label, path in slides:
        for level in (0, 1):
            limit = 12 if "j2k" in label or "jpeg2000" in label else 24
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                if level >= len(tif.series[0].levels):
                    continue
            rows = list(compare(path, level, limit))
            for r in rows:
                mode = "shared" if r["shared"] else "own"
                print(f"{label:24s} L{level} {r['reader']:10s} t={r['threads']} {mode:6s} "
                      f"{r['mpix_s']:7.1f} Mpix/s  x{r['ratio']:.2f}  diff={r['max_diff']} (vs {r.get('diff_vs')})  "
                      f"{r.get('boxes')} boxes <= {r.get('box')} px", flush=True)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    if sys.argv[1:2] == ["--child"]:
        import json

        a = sys.argv[2:]
        print(json.dumps(child(a[0], int(a[1]), a[2], int(a[3]), a[4] == "shared", int(a[5]))))
    else:
        _main(sys.argv[1:])
