"""napari reader for the OME-Zarr stores written by ``nucseg-wsi``.

The reader returns two layers, both multiscale and lazy (dask arrays over the zarr
chunks, so a slide-sized store opens without being read):

* the slide image (the overview pyramid, or the full-resolution RGB with
  ``--save-image``) as an RGB image layer, channels moved last;
* the nuclei (``labels/nuclei``) as a labels layer, with the per-nucleus table
  ``nucseg/nuclei.parquet`` as its ``features`` (one row per nucleus, keyed by label).

Each layer's ``scale`` and ``translate`` come from its NGFF ``coordinateTransformations``
(micrometres), so the two overlay each other, and any other layer placed in micrometres.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: napari's ``(data, kwargs, layer_type)`` tuple.
LayerData = tuple[Any, dict[str, Any], str]

#: Tables with more rows are not loaded as features (memory: about 150 bytes a row in
#: pandas plus about 100 in napari's label index); the layer's metadata names the file.
MAX_FEATURE_ROWS = 1_000_000


def is_nucseg_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder whose root ``zarr.json`` carries nucseg run metadata.

    Reads one small JSON file: napari asks every reader about every path it opens.
    """
    p = Path(path)
    try:
        doc = json.loads((p / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("attributes", {}).get("nucseg"), dict)


def get_reader(path: str | Sequence[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_store` for a nucseg store, None for anything else.

    Parameters
    ----------
    path : str or list of str
        What napari was asked to open; a list is claimed only when it is one store.
    """
    if not isinstance(path, (str, os.PathLike)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_store if is_nucseg_store(path) else None


def spatial_transform(multiscales: list[dict[str, Any]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of level 0 of an NGFF multiscales, on its space axes only.

    napari derives the coarser levels' scales from their shapes, so level 0 is enough.
    The channel axis of an image is dropped (napari shows it as RGB instead).

    Examples
    --------
    >>> ms = [{"axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
    ...                 {"name": "x", "type": "space"}],
    ...        "datasets": [{"path": "0", "coordinateTransformations": [
    ...            {"type": "scale", "scale": [1.0, 0.5, 0.5]},
    ...            {"type": "translation", "translation": [0.0, 0.25, 0.25]}]}]}]
    >>> spatial_transform(ms)
    ((0.5, 0.5), (0.25, 0.25))
    """
    ms = multiscales[0]
    space = [i for i, ax in enumerate(ms["axes"]) if ax.get("type") == "space"]
    transforms = {t["type"]: t[t["type"]] for t in ms["datasets"][0]["coordinateTransformations"]}
    scale = transforms["scale"]
    translation = transforms.get("translation", [0.0] * len(scale))
    return tuple(float(scale[i]) for i in space), tuple(float(translation[i]) for i in space)


def _levels(group: Any, multiscales: list[dict[str, Any]]) -> list[Any]:
    """The arrays of a multiscales' datasets, finest first, as dask arrays (nothing read)."""
    import dask.array as da

    return [da.from_zarr(group[d["path"]]) for d in multiscales[0]["datasets"]]


def image_layer(group: Any) -> LayerData:
    """The store's RGB image (``c, y, x`` levels) as a multiscale RGB image layer tuple."""
    ms = group.attrs["ome"]["multiscales"]
    scale, translate = spatial_transform(ms)
    # napari wants RGB last; a lazy transpose keeps the zarr chunks as they are.
    data = [level.transpose(1, 2, 0) for level in _levels(group, ms)]
    kwargs = {
        "name": ms[0].get("name", "slide"),
        "rgb": True,
        "multiscale": len(data) > 1,
        "scale": scale,
        "translate": translate,
        "units": "um",
        "contrast_limits": (0, 255),
    }
    return (data if len(data) > 1 else data[0], kwargs, "image")


def read_features(table: Path, max_rows: int = MAX_FEATURE_ROWS) -> Any | None:
    """The per-nucleus table as a DataFrame with napari's ``index`` column (the label).

    Returns None when the table has more than ``max_rows`` rows (its row count is read
    from the Parquet footer alone, so a huge table is never loaded).
    """
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(table).metadata.num_rows
    if rows > max_rows:
        logger.warning("%s has %d nuclei (> %d): not loaded as layer features", table, rows, max_rows)
        return None
    df = pq.read_table(table).to_pandas()
    # napari's Labels look a label's row up through the "index" column.
    df.insert(0, "index", df["label"].to_numpy())
    return df


def labels_layer(result: Any, max_rows: int = MAX_FEATURE_ROWS) -> LayerData:
    """The nucleus label pyramid of an opened store as a labels layer tuple, with features."""
    nuc = result.group["labels/nuclei"]
    ms = nuc.attrs["ome"]["multiscales"]
    scale, translate = spatial_transform(ms)
    data = _levels(nuc, ms)
    kwargs: dict[str, Any] = {
        "name": ms[0].get("name", "nuclei"),
        "multiscale": len(data) > 1,
        "scale": scale,
        "translate": translate,
        "units": "um",
        "metadata": {"nucseg_table": str(result.table_path)},
    }
    features = read_features(result.table_path, max_rows)
    if features is not None:
        kwargs["features"] = features
    return (data if len(data) > 1 else data[0], kwargs, "labels")


def read_store(path: str | Sequence[str]) -> list[LayerData]:
    """Open a finished nucseg-wsi store as an image layer and a labels layer.

    Parameters
    ----------
    path : str or list of one str
        The ``OUT.zarr`` folder.

    Returns
    -------
    list of (data, kwargs, layer_type)
        The slide image, then the nuclei on top of it.

    Raises
    ------
    nucseg.export.result.ResultError
        When the store is half-finished (the message says how to finish it with
        ``--resume``) or damaged.
    """
    from nucseg.export.result import open_result

    if not isinstance(path, (str, os.PathLike)):
        path = path[0]
    result = open_result(path)
    image = image_layer(result.group)
    image[1]["metadata"] = {"nucseg": result.meta}
    return [image, labels_layer(result)]
