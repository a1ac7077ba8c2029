"""nucseg.datasets: readers on synthetic files, the MoNuSeg-test exclusion, rescaling, the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucseg import datasets as D

# ---------------------------------------------------------------- MoNuSeg 2018 test exclusion

TRAIN_IDS = [  # the 30 MoNuSeg 2018 training slides: all must be kept
    "TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1", "TCGA-38-6178-01Z-00-DX1",
    "TCGA-49-4488-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1", "TCGA-A7-A13F-01Z-00-DX1",
    "TCGA-AR-A1AK-01Z-00-DX1", "TCGA-AR-A1AS-01Z-00-DX1", "TCGA-AY-A8YK-01A-01-TS1", "TCGA-B0-5698-01Z-00-DX1",
    "TCGA-B0-5710-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1", "TCGA-DK-A2I6-01A-01-TS1",
    "TCGA-E2-A14V-01Z-00-DX1", "TCGA-E2-A1B5-01Z-00-DX1", "TCGA-G2-A2EK-01A-02-TSB", "TCGA-G9-6336-01Z-00-DX1",
    "TCGA-G9-6348-01Z-00-DX1", "TCGA-G9-6356-01Z-00-DX1", "TCGA-G9-6362-01Z-00-DX1", "TCGA-G9-6363-01Z-00-DX1",
    "TCGA-HE-7128-01Z-00-DX1", "TCGA-HE-7129-01Z-00-DX1", "TCGA-HE-7130-01Z-00-DX1", "TCGA-KB-A93J-01A-01-TS1",
    "TCGA-NH-A8F7-01A-01-TS1", "TCGA-RD-A8N9-01A-01-TS1",
]


def _variants(slide: str) -> list[str]:
    return [
        slide, slide + ".tif", slide + ".xml", slide + "_1", slide + "_1.png", slide.lower(), slide.lower() + ".TIF",
        slide.replace("-", "_"), "crop3_" + slide + "_x512_y0.png", f"/data/MoNuSegTestData/{slide}.tif",
        slide[:12],  # patient barcode alone
    ]


def test_fourteen_test_ids():
    assert len(D.MONUSEG_TEST_IDS) == 14 and len(set(D.MONUSEG_TEST_IDS)) == 14


@pytest.mark.parametrize("slide", D.MONUSEG_TEST_IDS)
def test_every_test_id_is_excluded_in_every_spelling(slide):
    for name in _variants(slide):
        assert D.is_monuseg_test(name), name
        with pytest.raises(ValueError, match="evaluation-only"):
            D.check_trainable(name)


@pytest.mark.parametrize("slide", TRAIN_IDS)
def test_training_ids_are_kept(slide):
    for name in _variants(slide):
        assert not D.is_monuseg_test(name), name
        D.check_trainable(name)


def test_other_slides_of_a_test_patient_are_excluded():
    # Same patient as test slide TCGA-FG-A4MU-01B-01-TS1, different crop/slide naming.
    assert D.is_monuseg_test("TCGA-FG-A4MU-R01.tif_normal.png_normal_small_2.png")


@pytest.mark.parametrize("name", ["image01.png", "TCGA-2Z-A9J", "TCGA-2Z-A9J9X-01", "xx", "", "TCGA-2ZA-9J9"])
def test_non_tcga_or_near_misses_are_not_test(name):
    assert not D.is_monuseg_test(name)


def test_tcga_patient():
    assert D.tcga_patient("tcga_ac_a2fo-01a.png") == "TCGA-AC-A2FO"
    assert D.tcga_patient("no barcode") is None


# ---------------------------------------------------------------- Aperio XML


def _write_aperio(path: Path, regions: list[list[tuple[float, float]]], mpp: str | None = "0.25") -> Path:
    attr = f' MicronsPerPixel="{mpp}"' if mpp is not None else ""
    parts = [f'<Annotations{attr}><Annotation Id="1"><Regions>']
    for i, region in enumerate(regions):
        parts.append(f'<Region Id="{i + 1}"><Vertices>')
        parts += [f'<Vertex X="{x}" Y="{y}"/>' for x, y in region]
        parts.append("</Vertices></Region>")
    parts.append("</Regions></Annotation></Annotations>")
    path.write_text("".join(parts))
    return path


def _square(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_aperio_polygons_rasterised_x_is_column(tmp_path):
    # A 4-wide (x), 2-tall (y) rectangle: pixel centres 2..5 in x, 1..2 in y.
    p = _write_aperio(tmp_path / "a.xml", [_square(1.5, 0.5, 5.5, 2.5)])
    labels = D.read_aperio_xml(p, (6, 8))
    assert labels.dtype == np.int32 and labels.shape == (6, 8)
    expected = np.zeros((6, 8), np.int32)
    expected[1:3, 2:6] = 1
    np.testing.assert_array_equal(labels, expected)
    assert D.aperio_mpp(p) == 0.25


def test_aperio_overlap_goes_to_smaller_polygon_whatever_the_order(tmp_path):
    big, small = _square(0.5, 0.5, 10.5, 10.5), _square(6.5, 6.5, 12.5, 12.5)
    for order in ([big, small], [small, big]):
        labels = D.read_aperio_xml(_write_aperio(tmp_path / "o.xml", order), (16, 16))
        small_id = labels[12, 12]
        big_id = labels[2, 2]
        assert small_id != big_id and small_id > 0 and big_id > 0
        # The overlap (rows/cols 7..10) belongs to the smaller square.
        assert np.all(labels[7:11, 7:11] == small_id)
        assert np.count_nonzero(labels == small_id) == 36
        assert np.count_nonzero(labels == big_id) == 100 - 16
        # Ids follow file order.
        assert (small_id, big_id) == ((2, 1) if order[0] is big else (1, 2))


def test_aperio_fully_covered_or_degenerate_regions_are_dropped(tmp_path):
    regions = [_square(0.5, 0.5, 8.5, 8.5), _square(2.5, 2.5, 4.5, 4.5), [(1, 1), (3, 3)], _square(2.5, 2.5, 4.5, 4.5)]
    labels = D.read_aperio_xml(_write_aperio(tmp_path / "d.xml", regions), (10, 10))
    # Two identical small squares: the later one wins the tie and the earlier one vanishes;
    # the 2-vertex region has no area. Labels are renumbered 1..N.
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert np.count_nonzero(labels == 2) == 4


def test_aperio_empty_file_gives_empty_labels(tmp_path):
    labels = D.read_aperio_xml(_write_aperio(tmp_path / "e.xml", [], mpp=None), (4, 5))
    assert labels.shape == (4, 5) and not labels.any()
    assert D.aperio_mpp(tmp_path / "e.xml") is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<Annotations><Region>", "not well-formed XML"),
        ("<Foo/>", "expected <Annotations>"),
        ('<Annotations><Region Id="7"><Vertex X="1"/></Region></Annotations>', "Region Id=7.*without X or Y"),
        ('<Annotations><Region Id="3"><Vertex X="a" Y="1"/></Region></Annotations>', "Region Id=3.*non-numeric"),
    ],
)
def test_aperio_malformed(tmp_path, text, match):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        D.read_aperio_xml(p, (4, 4))
    assert "bad.xml" in str(err.value)


def test_aperio_bad_mpp(tmp_path):
    p = _write_aperio(tmp_path / "m.xml", [], mpp="-1")
    with pytest.raises(ValueError, match="positive"):
        D.aperio_mpp(p)


# ---------------------------------------------------------------- label images, binary masks


def test_label_png_16bit_is_renumbered(tmp_path):
    arr = np.zeros((5, 6), np.uint16)
    arr[0, 0], arr[2, 2:4], arr[4, 5] = 7, 300, 7
    Image.fromarray(arr).save(tmp_path / "l.png")
    labels = D.read_label_image(tmp_path / "l.png")
    assert labels.dtype == np.int32
    assert labels[0, 0] == labels[4, 5] == 1 and np.all(labels[2, 2:4] == 2)


def test_label_npy_and_tiff(tmp_path):
    import tifffile

    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.save(tmp_path / "l.npy", arr)
    tifffile.imwrite(tmp_path / "l.tif", arr.astype(np.uint32))
    for name in ("l.npy", "l.tif"):
        np.testing.assert_array_equal(D.read_label_image(tmp_path / name), arr)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((3, 4, 3), np.uint8), "expected a 2-D array"),
        (np.full((3, 4), 0.5), "expected integer"),
        (np.full((3, 4), -1, np.int32), "expected 0..2"),
    ],
)
def test_label_image_malformed(tmp_path, arr, match):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(ValueError, match=match) as err:
        D.read_label_image(tmp_path / "bad.npy")
    assert "bad.npy" in str(err.value)


def test_binary_mask_components_use_4_connectivity(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 1:3] = 255
    m[3, 3] = 255  # touches the square only diagonally
    Image.fromarray(m).save(tmp_path / "b.png")
    assert D.read_binary_instances(tmp_path / "b.png").max() == 2
    assert D.read_binary_instances(tmp_path / "b.png", connectivity=2).max() == 1


def test_binary_mask_not_binary(tmp_path):
    Image.fromarray(np.array([[0, 1, 2]], np.uint8)).save(tmp_path / "nb.png")
    with pytest.raises(ValueError, match="not binary"):
        D.read_binary_instances(tmp_path / "nb.png")


# ---------------------------------------------------------------- one mask per nucleus


def _masks(tmp_path: Path, boxes: list[tuple[slice, slice]], shape=(8, 8), value=255) -> list[Path]:
    paths = []
    for k, (rs, cs) in enumerate(boxes):
        m = np.zeros(shape, np.uint8)
        m[rs, cs] = value
        paths.append(tmp_path / f"mask_{k:04d}.png")
        Image.fromarray(m).save(paths[-1])
    return paths


def test_mask_folder_numbers_masks_in_order_and_keeps_touching_nuclei_apart(tmp_path):
    # Two nuclei that touch (no background between): one object each, unlike binary masks.
    paths = _masks(tmp_path, [(slice(1, 4), slice(1, 4)), (slice(1, 4), slice(4, 6))])
    labels = D.read_mask_folder(paths)
    want = np.zeros((8, 8), np.int32)
    want[1:4, 1:4], want[1:4, 4:6] = 1, 2
    np.testing.assert_array_equal(labels, want)
    assert labels.dtype == np.int32


@pytest.mark.parametrize("reverse", [False, True])
def test_mask_folder_overlap_goes_to_smaller_mask_whatever_the_order(tmp_path, reverse):
    big, small = (slice(0, 6), slice(0, 6)), (slice(2, 4), slice(2, 4))
    paths = _masks(tmp_path, [small, big] if reverse else [big, small])
    labels = D.read_mask_folder(paths)
    small_id = labels[2, 2]
    assert set(np.unique(labels[2:4, 2:4])) == {small_id}  # the small nucleus keeps all its pixels
    assert (labels == small_id).sum() == 4 and (labels > 0).sum() == 36 and labels.max() == 2


def test_mask_folder_drops_empty_and_fully_covered_masks(tmp_path):
    paths = _masks(tmp_path, [(slice(1, 3), slice(1, 3)), (slice(0, 0), slice(0, 0)), (slice(1, 3), slice(1, 3))])
    labels = D.read_mask_folder(paths)  # the third covers the first exactly: a tie, the later wins
    assert labels.max() == 1 and (labels == 1).sum() == 4


def test_mask_folder_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="at least one mask"):
        D.read_mask_folder([])
    (bad,) = _masks(tmp_path, [(slice(1, 3), slice(1, 3))], value=7)
    Image.fromarray(np.array([[0, 3, 7]], np.uint8)).save(bad)
    with pytest.raises(ValueError, match="not binary") as err:
        D.read_mask_folder([bad])
    assert "mask_0000.png" in str(err.value)
    (tmp_path / "other").mkdir()
    ok = _masks(tmp_path / "other", [(slice(1, 3), slice(1, 3))])[0]
    with pytest.raises(ValueError, match=r"expected \(9, 9\)"):
        D.read_mask_folder([ok], shape=(9, 9))


# ---------------------------------------------------------------- image-editor shape XML (GBM40)


def _write_shape_xml(path: Path, shapes: list, layers: str | None = None) -> Path:
    """``shapes``: ``(type, points)`` or ``(type, points, rotation)``; an Oval's points are its
    Extent ``(x, y, width, height)``. Written as the GBM40 files are: BOM, comment, CRLF."""
    parts = ['<!--Document-->', '<Document FileVersion="1.0">', "<Layers>", '<Layer Name="Layer1"><Shapes>']
    for kind, pts, *rot in shapes:
        parts.append(f'<Shape Type="{kind}"><Settings><Line Width="1"/></Settings>')
        parts.append(f'<Data Rotation="{rot[0] if rot else 0}">')
        if kind == "Oval":
            x, y, w, h = pts
            parts.append(f'<Extent X="{x}" Y="{y}" Width="{w}" Height="{h}" />')
        else:
            parts += ["<Points>"] + [f'<Point X="{x}" Y="{y}" />' for x, y in pts] + ["</Points>"]
        parts.append("</Data></Shape>")
    parts += ["</Shapes></Layer>", "</Layers>", "</Document>"]
    text = "\r\n".join(parts) if layers is None else layers
    path.write_bytes(text.encode("utf-8-sig"))
    return path


def test_shape_xml_polygon_rasterised_x_is_column(tmp_path):
    # The Aperio test's rectangle: 4 wide (x), 2 tall (y); pixel centres 2..5 in x, 1..2 in y.
    p = _write_shape_xml(tmp_path / "01_data.xml", [("Polygon", _square(1.5, 0.5, 5.5, 2.5))])
    labels = D.read_shape_xml(p, (6, 8))
    assert labels.dtype == np.int32 and labels.shape == (6, 8)
    expected = np.zeros((6, 8), np.int32)
    expected[1:3, 2:6] = 1
    np.testing.assert_array_equal(labels, expected)
    # A SmoothPolygon's points are rasterised as a polygon too (the smoothing is not reproduced).
    p = _write_shape_xml(tmp_path / "s.xml", [("SmoothPolygon", _square(1.5, 0.5, 5.5, 2.5))])
    np.testing.assert_array_equal(D.read_shape_xml(p, (6, 8)), expected)


@pytest.mark.parametrize("small_first", [False, True])
def test_shape_xml_overlap_goes_to_smaller_shape_whatever_the_order(tmp_path, small_first):
    big, small = ("Polygon", _square(0.5, 0.5, 10.5, 10.5)), ("Polygon", _square(6.5, 6.5, 12.5, 12.5))
    labels = D.read_shape_xml(_write_shape_xml(tmp_path / "o.xml", [small, big] if small_first else [big, small]), (16, 16))
    small_id, big_id = labels[12, 12], labels[2, 2]
    assert np.all(labels[7:11, 7:11] == small_id)  # the overlap belongs to the smaller square
    assert np.count_nonzero(labels == small_id) == 36 and np.count_nonzero(labels == big_id) == 100 - 16
    assert (small_id, big_id) == ((1, 2) if small_first else (2, 1))  # ids follow file order


def test_shape_xml_degenerate_and_covered_shapes_are_dropped(tmp_path):
    shapes = [("Polygon", _square(0.5, 0.5, 8.5, 8.5)), ("Polygon", [(1, 1), (3, 3)]),
              ("Polygon", _square(2.5, 2.5, 4.5, 4.5)), ("Polygon", _square(2.5, 2.5, 4.5, 4.5))]
    labels = D.read_shape_xml(_write_shape_xml(tmp_path / "d.xml", shapes), (10, 10))
    # 2 points have no area; of two identical squares the later wins the tie; ids 1..N.
    assert sorted(np.unique(labels)) == [0, 1, 2] and np.count_nonzero(labels == 2) == 4
    assert [len(xy) for _, xy in D.shape_xml_polygons(tmp_path / "d.xml")] == [4, 2, 4, 4]
    empty = D.read_shape_xml(_write_shape_xml(tmp_path / "e.xml", []), (4, 5))
    assert empty.shape == (4, 5) and not empty.any()


def test_shape_xml_oval_and_rotation(tmp_path):
    # An Oval is the ellipse inscribed in its Extent: centre (x 6, y 6), semi-axes 5.5 (x), 3.5 (y).
    labels = D.read_shape_xml(_write_shape_xml(tmp_path / "v.xml", [("Oval", (0.5, 2.5, 11, 7))]), (13, 14))
    rows, cols = np.nonzero(labels)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 9, 1, 11)
    assert np.count_nonzero(labels) == pytest.approx(np.pi * 5.5 * 3.5, rel=0.1)
    # Rotated 90 degrees it stands upright (about the Extent's centre).
    labels = D.read_shape_xml(_write_shape_xml(tmp_path / "r.xml", [("Oval", (0.5, 2.5, 11, 7), 90)]), (13, 14))
    rows, cols = np.nonzero(labels)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 11, 3, 9)
    # Rotation is clockwise on screen (y down) about the bounding box's centre (4.5, 3.5): a right
    # triangle with its right angle at the top left has it at the top right after +90 degrees
    # (counter-clockwise would put it at the bottom left). No pixel centre lies on an edge.
    tri = [(0.5, 0.5), (8.5, 0.5), (0.5, 6.5)]
    before = D.read_shape_xml(_write_shape_xml(tmp_path / "t0.xml", [("Polygon", tri)]), (10, 10))
    after = D.read_shape_xml(_write_shape_xml(tmp_path / "t1.xml", [("Polygon", tri, 90)]), (10, 10))
    assert before[1, 1] and not before[0, 7]
    assert after[0, 7] and not after[1, 1] and not after[7, 1]
    ((_, rotated),) = D.shape_xml_polygons(tmp_path / "t1.xml")
    np.testing.assert_allclose(rotated, [(7.5, -0.5), (7.5, 7.5), (1.5, -0.5)], atol=1e-9)
    full_turn = D.read_shape_xml(_write_shape_xml(tmp_path / "t2.xml", [("Polygon", tri, 360)]), (10, 10))
    np.testing.assert_array_equal(full_turn, before)


def _doc(shapes: str) -> str:
    return f"<Document><Layers><Layer><Shapes>{shapes}</Shapes></Layer></Layers></Document>"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<Document><Layers>", "not well-formed XML"),
        ('<Annotations><Region Id="1"/></Annotations>', "root element <Annotations>; expected <Document>"),
        ("<Document/>", "without <Layers>"),
        (_doc('<Shape Type="Polygon"><Data><Points><Point X="a" Y="1"/></Points></Data></Shape>'),
         r"Shape #0 Type='Polygon'.*X='a' is not a number"),
        (_doc('<Shape Type="Polygon"><Data><Points><Point X="1"/></Points></Data></Shape>'),
         r"Shape #0.*Y=None is not a number"),
        (_doc('<Shape Type="Polygon"><Data Rotation="x"><Points/></Data></Shape>'), "Rotation='x' is not a number"),
        (_doc('<Shape Type="Polygon"/>'), "Shape #0.*has no <Data>"),
        (_doc('<Shape Type="Polygon"><Data><Points/></Data></Shape>'
              '<Shape Type="Rectangle"><Data><Extent X="1" Y="1" Width="2" Height="2"/></Data></Shape>'),
         "Shape #1 Type='Rectangle' has no <Points>"),
        (_doc('<Shape Type="Oval"><Data><Extent X="1" Y="1" Width="nan" Height="2"/></Data></Shape>'),
         "Width='nan' is not finite"),
    ],
)
def test_shape_xml_malformed(tmp_path, text, match):
    p = _write_shape_xml(tmp_path / "bad_data.xml", [], layers=text)
    with pytest.raises(ValueError, match=match) as err:
        D.read_shape_xml(p, (4, 4))
    assert "bad_data.xml" in str(err.value)


# ---------------------------------------------------------------- CPM ASCII


def _write_cpm(path: Path, arr: np.ndarray, header: str | None = None) -> Path:
    h, w = arr.shape
    lines = [header if header is not None else f"{w} {h}"] + [str(v) for v in arr.ravel()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cpm_ascii_readme_example(tmp_path):
    # The 5x4 example of the challenge's README_training.txt (rows listed top to bottom).
    arr = np.array([[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 2, 0, 0], [0, 2, 2, 2, 0]])
    labels = D.read_cpm_ascii(_write_cpm(tmp_path / "m.txt", arr))
    assert labels.dtype == np.int32 and labels.shape == (4, 5)
    np.testing.assert_array_equal(labels, arr)


def test_cpm_ascii_non_square_orientation(tmp_path):
    arr = np.arange(6).reshape(2, 3)  # width 3, height 2
    np.testing.assert_array_equal(D.read_cpm_ascii(_write_cpm(tmp_path / "m.txt", arr)), arr)


@pytest.mark.parametrize(
    ("header", "body", "match"),
    [
        ("5", None, "expected 'width height'"),
        ("a b", None, "expected 'width height'"),
        ("5 4", "1\n2\n", "2 label values; expected width\\*height = 5\\*4 = 20"),
        ("2 1", "1\nx\n", "must be integers"),
        ("2 1", "1\n-3\n", "negative"),
    ],
)
def test_cpm_ascii_malformed(tmp_path, header, body, match):
    p = tmp_path / "bad_mask.txt"
    p.write_text(header + "\n" + (body if body is not None else "0\n" * 20))
    with pytest.raises(ValueError, match=match) as err:
        D.read_cpm_ascii(p)
    assert "bad_mask.txt" in str(err.value)


# ---------------------------------------------------------------- rescaling


def _disks(shape=(64, 80)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate([(15, 15, 7), (40, 30, 9), (20, 60, 6), (50, 65, 8)], start=11):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    rgb = np.where(labels[..., None] > 0, 60, 200).astype(np.uint8).repeat(3, axis=2)
    return rgb, labels


@pytest.mark.parametrize(("mpp", "target"), [(0.25, 0.5), (0.5, 0.25), (0.25, 0.25), (0.2527, 0.5), (0.5, 0.37)])
def test_rescale_keeps_instances(mpp, target):
    rgb, labels = _disks()
    rgb2, labels2 = D.rescale_pair(rgb, labels, mpp, target)
    f = mpp / target
    assert labels2.shape == (round(64 * f), round(80 * f)) and rgb2.shape == labels2.shape + (3,)
    assert rgb2.dtype == np.uint8 and labels2.dtype == np.int32
    # Same ids, none invented by blending, and each object's area scales by f**2.
    assert set(np.unique(labels2)) == set(np.unique(labels))
    for k in range(11, 15):
        assert np.count_nonzero(labels2 == k) == pytest.approx(np.count_nonzero(labels == k) * f * f, rel=0.2)
    # The image moved with the labels: objects stay dark.
    assert rgb2[labels2 > 0].mean() < 100 < rgb2[labels2 == 0].mean()


def test_rescale_validates():
    rgb, labels = _disks()
    with pytest.raises(ValueError, match="positive"):
        D.rescale_pair(rgb, labels, 0, 0.5)
    with pytest.raises(ValueError, match="differs"):
        D.rescale_pair(rgb, labels[:-1], 0.25, 0.5)


# ---------------------------------------------------------------- cache reader


def _fake_cache(root: Path, source: str, names: list[str]) -> None:
    out = D.source_dir(root, source)
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    rgb, labels = _disks()
    entries = []
    for n in names:
        Image.fromarray(rgb).save(out / "images" / f"{n}.png")
        np.save(out / "labels" / f"{n}.npy", labels)
        entries.append({"name": n, "image": f"images/{n}.png", "labels": f"labels/{n}.npy",
                        "organ": "breast", "patient": D.tcga_patient(n) or n, "mpp": 0.25})
    (out / "manifest.json").write_text(json.dumps({"images": entries}))


def test_cache_reader_skips_test_patients_and_rescales(tmp_path):
    _fake_cache(tmp_path, "monuseg2018_train_xml", ["TCGA-A7-A13E-01Z-00-DX1", "TCGA-AC-A2FO-01A-01-TS1"])
    images = D.load_source(tmp_path, "monuseg2018_train_xml", target_mpp=0.5)
    assert [im.name for im in images] == ["TCGA-A7-A13E-01Z-00-DX1"]
    assert images[0].labels.shape == (32, 40) and images[0].mpp == 0.5 and images[0].patient == "TCGA-A7-A13E"


def test_evaluation_only_source_needs_explicit_flag(tmp_path):
    _fake_cache(tmp_path, "monuseg2018_test", ["TCGA-AC-A2FO-01A-01-TS1"])
    assert D.source_dir(tmp_path, "monuseg2018_test").parent.name == "eval_only"
    with pytest.raises(ValueError, match="evaluation-only"):
        D.load_source(tmp_path, "monuseg2018_test")
    assert len(D.load_source(tmp_path, "monuseg2018_test", evaluation=True)) == 1


def test_cache_missing_and_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nucseg_data.py"):
        D.load_source(tmp_path, "cpm15")
    with pytest.raises(ValueError, match="unknown source"):
        D.load_source(tmp_path, "nope")


def test_registry_is_complete():
    for s in D.SOURCES.values():
        assert s.mpp > 0 and s.organs and s.licence and len(s.commit) == 40 and "/" in s.repository
        assert s.instance_quality in ("full", "merged")
        assert s.annotation in ("aperio_xml", "binary_cc4", "cpm_ascii", "mask_per_nucleus", "label_npy", "shape_xml")


# ---------------------------------------------------------------- the real cache (skips when absent)

_CACHE = Path(os.environ.get("NUCSEG_DATA_CACHE", "/work/data_cache"))


@pytest.mark.parametrize("source", [s for s in D.SOURCES if not D.SOURCES[s].evaluation_only])
def test_real_cache(source):
    if not (D.source_dir(_CACHE, source) / "manifest.json").is_file():
        pytest.skip(f"no converted {source} under {_CACHE} (set NUCSEG_DATA_CACHE; build with scripts/nucseg_data.py)")
    manifest = D.read_manifest(_CACHE, source)
    assert manifest["n_images"] == len(manifest["images"]) > 0
    assert not any(D.is_monuseg_test(e["name"]) for e in manifest["images"])
    first = next(D.iter_source(_CACHE, source))
    assert first.rgb.dtype == np.uint8 and first.labels.dtype == np.int32
    assert first.labels.max() == first.meta["n_nuclei"]
    # Pairing sanity: nuclei are darker than their surroundings in every H&E image that has any
    # (a few CoNSeP tiles hold none).
    annotated = [e for e in manifest["images"] if e["n_nuclei"]]
    assert len(annotated) >= 0.95 * len(manifest["images"])
    assert all(e["grey_in_nuclei"] < e["grey_outside"] for e in annotated)


# ---------------------------------------------------------------- mean_chroma (DSB 2018's H&E subset)


def test_mean_chroma_is_zero_for_grey_and_counts_the_channel_spread():
    grey = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    assert D.mean_chroma(grey) == 0.0
    # Fluorescence stored as grey RGB with an alpha channel: still zero.
    rgba = np.concatenate([grey, np.full((16, 16, 1), 255, np.uint8)], axis=2)
    assert D.mean_chroma(rgba) == 0.0
    # Half the pixels haematoxylin purple (spread 200 - 90 = 110), half white (0): mean 55.
    img = np.full((4, 4, 3), 255, np.uint8)
    img[:2] = (150, 90, 200)
    assert D.mean_chroma(img) == pytest.approx(55.0)
    # No uint8 wrap-around: 0 vs 255 is a spread of 255.
    assert D.mean_chroma(np.array([[[0, 255, 0]]], np.uint8)) == 255.0


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 2), (0, 4, 3), (2, 2, 5)])
def test_mean_chroma_rejects_non_rgb(shape):
    with pytest.raises(ValueError, match="rgb must have shape"):
        D.mean_chroma(np.zeros(shape, np.uint8))
