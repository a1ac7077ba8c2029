"""napari plugin of nucseg (``pip install "nucseg[napari]"``).

Two contributions, declared in ``napari.yaml`` (npe2):

* a reader that opens an OME-Zarr store written by ``nucseg-wsi`` (the slide image and
  the nucleus labels, lazily, in micrometres, with the per-nucleus table as the labels'
  features): :func:`nucseg.napari._reader.get_reader`;
* the *Segment nuclei* widget, which runs the bundled network on an image layer:
  :class:`nucseg.napari._widget.SegmentWidget`.

Importing this package imports neither napari nor Qt; the reader needs neither.
"""

from __future__ import annotations
