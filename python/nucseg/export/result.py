"""Open a finished ``nucseg-wsi`` output for reading, and write files safely.

Everything the exporters need to know about a store comes from its metadata: the run
record in the root ``zarr.json`` (attribute ``nucseg``), the label pyramid
``labels/nuclei/0..`` and the table ``nucseg/nuclei.parquet``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class ResultError(ValueError):
    """The path is not a finished nucseg-wsi output, or a destination cannot be written."""


@dataclass(frozen=True)
class Result:
    """A finished nucseg-wsi output, opened read-only.

    Attributes
    ----------
    path : Path
        The ``.zarr`` store.
    meta : dict
        The run metadata (root attribute ``nucseg``).
    group : zarr.Group
        The root group, read-only.
    table_path : Path
        The per-nucleus Parquet table.
    level0_per_label : tuple of float
        ``(fy, fx)``: slide level-0 pixels per label pixel. A point at label-grid edge
        coordinates ``(y, x)`` (pixel ``i`` spans ``[i, i + 1)``) is at level-0 edge
        coordinates ``(y * fy, x * fx)``.
    """

    path: Path
    meta: dict[str, Any]
    group: Any
    table_path: Path
    level0_per_label: tuple[float, float]

    @property
    def labels(self) -> Any:
        """The full-resolution label array (zarr, lazily read)."""
        return self.group["labels/nuclei/0"]

    def label_levels(self) -> list[Any]:
        """All levels of the label pyramid, finest first."""
        nuc = self.group["labels/nuclei"]
        out = []
        while str(len(out)) in nuc:
            out.append(nuc[str(len(out))])
        return out

    @property
    def label_mpp(self) -> tuple[float, float]:
        """``(y, x)`` microns per label pixel."""
        mpp = self.meta["processing"]["mpp"]
        return (float(mpp[0]), float(mpp[1]))

    @property
    def level0_size(self) -> tuple[int, int]:
        """``(height, width)`` of the slide's level 0."""
        w, h = self.meta["slide"]["levels"][0]
        return (int(h), int(w))


def _not_nucseg(path: Path, why: str) -> ResultError:
    return ResultError(f"{path} is not a nucseg-wsi output ({why})")


def open_result(path: str | os.PathLike[str]) -> Result:
    """Open a finished nucseg-wsi store, checking that it is one.

    Parameters
    ----------
    path : path-like
        The ``OUT.zarr`` written by ``nucseg-wsi``.

    Returns
    -------
    Result

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ResultError
        ``path`` is not a nucseg-wsi output, or its run did not finish (the message says
        how to finish it with ``--resume``).
    """
    import zarr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if not p.is_dir():
        raise _not_nucseg(p, "not a folder; expected the OUT.zarr folder nucseg-wsi wrote")
    try:
        root_doc = json.loads((p / "zarr.json").read_text())
    except FileNotFoundError:
        raise _not_nucseg(p, "no zarr.json: not a zarr v3 store") from None
    except (OSError, ValueError) as exc:
        raise _not_nucseg(p, f"unreadable zarr.json: {exc}") from None
    meta = root_doc.get("attributes", {}).get("nucseg") if isinstance(root_doc, dict) else None
    if not isinstance(meta, dict):
        raise _not_nucseg(p, "its zarr.json has no 'nucseg' run metadata")
    status = meta.get("status")
    if status != "complete":
        slide = meta.get("slide", {}).get("path", "SLIDE")
        done = len(list((p / "nucseg" / "tiles").glob("*.json")))
        total = meta.get("tiles_tissue", "?")
        raise ResultError(
            f"{p} is a half-finished run (status {status!r}, {done} of {total} tiles done); "
            f"finish it with: nucseg-wsi {slide} {p} --resume"
        )
    table = p / "nucseg" / "nuclei.parquet"
    if not table.is_file():
        raise ResultError(f"{p} is incomplete: the nucleus table {table} is missing; rerun nucseg-wsi with --resume")
    try:
        group = zarr.open_group(str(p), mode="r", zarr_format=3)
        group["labels/nuclei/0"]
        proc = meta["processing"]
        levels = meta["slide"]["levels"]
        w0, h0 = levels[0]
        wl, hl = levels[int(proc["level"])]
        sy, sx = (float(v) for v in proc["scale"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ResultError(f"{p} is incomplete or damaged: cannot read {exc}") from None
    # Label px -> level px is 1/scale; level px -> level-0 px is the level downsample.
    factor = ((h0 / hl) / sy, (w0 / wl) / sx)
    return Result(path=p, meta=meta, group=group, table_path=table, level0_per_label=factor)


def check_destination(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check that a file can be written at ``path`` before doing any work.

    Raises
    ------
    ResultError
        ``path`` exists and ``overwrite`` is False, is a folder, or its folder is
        missing or not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise ResultError(f"destination {p} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise ResultError(f"destination {p} already exists; pass --overwrite to replace it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ResultError(f"destination folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ResultError(f"destination folder {parent} is not writable")
    return p


@contextmanager
def atomic_writer(path: str | os.PathLike[str], *, overwrite: bool = False, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path``, renamed onto it only on success.

    A failure (or an interruption) leaves any earlier file at ``path`` untouched.
    """
    p = check_destination(path, overwrite=overwrite)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise ResultError(f"cannot write to {p.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        if p.exists() and not overwrite:  # appeared while we were writing
            raise ResultError(f"destination {p} already exists; pass --overwrite to replace it")
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
