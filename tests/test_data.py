"""TNBC loader, splits, training targets and augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nucseg.data import (
    AugmentConfig,
    augment_sample,
    grouped_kfold,
    instance_distance,
    leave_one_patient_out,
    load_tnbc,
    loss_weights,
    mask_to_instances,
    read_rgb,
)


def _make_folder(root: Path, spec: dict[str, list[str]], *, size: int = 32, mode: str = "RGBA") -> Path:
    rng = np.random.default_rng(0)
    for patient, stems in spec.items():
        (root / f"Slide_{patient}").mkdir(parents=True)
        (root / f"GT_{patient}").mkdir(parents=True)
        for stem in stems:
            rgb = rng.integers(0, 256, (size, size, 4 if mode == "RGBA" else 3), dtype=np.uint8)
            Image.fromarray(rgb, mode).save(root / f"Slide_{patient}" / f"{stem}.png")
            gt = np.zeros((size, size), np.uint8)
            gt[2:8, 2:8] = 255
            gt[2:8, 9:15] = 255  # separated from the first by one background column
            gt[20:30, 20:30] = 255
            Image.fromarray(gt, "L").save(root / f"GT_{patient}" / f"{stem}.png")
    return root


def test_synthetic_folder_loads(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1", "01_2", "01_10"], "02": ["02_1"]})
    ims = load_tnbc(root)
    assert [(im.patient, im.name) for im in ims] == [("01", "01_1"), ("01", "01_2"), ("01", "01_10"), ("02", "02_1")]
    im = ims[0]
    assert im.rgb.shape == (32, 32, 3) and im.rgb.dtype == np.uint8
    assert im.mask.dtype == bool and im.mask.sum() == 36 + 36 + 100
    assert im.labels.dtype == np.int32 and im.labels.max() == 3
    src = np.asarray(Image.open(root / "Slide_01" / "01_1.png"))[..., :3]
    np.testing.assert_array_equal(im.rgb, src)
    assert [im.patient for im in load_tnbc(root, ["02"])] == ["02"]


def test_rgb_images_load(tmp_path):
    root = _make_folder(tmp_path, {"05": ["05_1"]}, mode="RGB")
    assert load_tnbc(root)[0].rgb.shape == (32, 32, 3)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="TNBC folder not found"):
        load_tnbc(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no Slide_XX"):
        load_tnbc(tmp_path)


def test_missing_gt_folder(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1"]})
    for p in (root / "GT_01").iterdir():
        p.unlink()
    (root / "GT_01").rmdir()
    with pytest.raises(FileNotFoundError, match="GT_01"):
        load_tnbc(root)


def test_mismatched_names(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1", "01_2"]})
    (root / "GT_01" / "01_2.png").rename(root / "GT_01" / "01_3.png")
    with pytest.raises(ValueError, match=r"images without mask \['01_2'\], masks without image \['01_3'\]"):
        load_tnbc(root)


def test_non_binary_gt(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1"]})
    gt = np.zeros((32, 32), np.uint8)
    gt[:4] = 255
    gt[5:8] = 3  # instance ids or a greyscale mask: not binary
    Image.fromarray(gt, "L").save(root / "GT_01" / "01_1.png")
    with pytest.raises(ValueError, match="not binary"):
        load_tnbc(root)


def test_wrong_image_mode(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1"]})
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(root / "Slide_01" / "01_1.png")
    with pytest.raises(ValueError, match="mode 'L'"):
        load_tnbc(root)
    with pytest.raises(FileNotFoundError):
        read_rgb(root / "missing.png")


def test_shape_mismatch(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1"]})
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(root / "GT_01" / "01_1.png")
    with pytest.raises(ValueError, match="shape"):
        load_tnbc(root)


def test_unknown_patient(tmp_path):
    root = _make_folder(tmp_path, {"01": ["01_1"]})
    with pytest.raises(ValueError, match=r"patients \['03'\] not found"):
        load_tnbc(root, ["03"])


def test_real_tnbc(tnbc_dir):
    ims = load_tnbc(tnbc_dir)
    per_patient = {}
    comps = {}
    for im in ims:
        per_patient[im.patient] = per_patient.get(im.patient, 0) + 1
        comps[im.patient] = comps.get(im.patient, 0) + int(im.labels.max())
        assert im.rgb.shape == (512, 512, 3) and im.labels.shape == (512, 512)
    # Counts from shared/data/README.md (components with 4-connectivity).
    assert per_patient == {"01": 7, "02": 3, "04": 8, "05": 4, "06": 3, "07": 3, "09": 6, "10": 4, "11": 3}
    assert comps == {"01": 460, "02": 192, "04": 601, "05": 422, "06": 209, "07": 559, "09": 302, "10": 316, "11": 256}


def test_mask_to_instances_matches_scipy():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 40)) > 0.6
    for conn in (1, 2):
        ref, n = ndi.label(mask, ndi.generate_binary_structure(2, conn))
        got = mask_to_instances(mask, conn)
        assert got.max() == n
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="connectivity"):
        mask_to_instances(mask, 3)


GROUPS = ["01"] * 7 + ["02"] * 3 + ["04"] * 8 + ["05"] * 4 + ["06"] * 3 + ["07"] * 3 + ["09"] * 6 + ["10"] * 4 + ["11"] * 3


def test_leave_one_patient_out():
    splits = leave_one_patient_out(GROUPS)
    assert len(splits) == 9
    g = np.array(GROUPS)
    for tr, te in splits:
        assert len(set(g[te])) == 1 and set(g[te]).isdisjoint(g[tr])
        assert len(tr) + len(te) == len(GROUPS)


@pytest.mark.parametrize("k", [2, 3, 9])
def test_grouped_kfold(k):
    splits = grouped_kfold(GROUPS, k, seed=3)
    g = np.array(GROUPS)
    assert len(splits) == k
    tested = np.concatenate([te for _, te in splits])
    assert sorted(tested.tolist()) == list(range(len(GROUPS)))  # each image held out exactly once
    for tr, te in splits:
        assert set(g[te]).isdisjoint(g[tr]) and len(te) > 0
    sizes = [len(te) for _, te in splits]
    assert max(sizes) - min(sizes) <= 8  # balanced by the largest patient's size at most
    assert grouped_kfold(GROUPS, k, seed=3)[0][1].tolist() == splits[0][1].tolist()  # seeded
    with pytest.raises(ValueError, match="k must be"):
        grouped_kfold(GROUPS, 10)


def test_instance_distance_peaks_at_centres():
    labels = np.zeros((30, 40), np.int32)
    yy, xx = np.mgrid[:30, :40]
    labels[(yy - 15) ** 2 + (xx - 10) ** 2 <= 36] = 1
    labels[5:26, 22:36] = 2
    d = instance_distance(labels)
    assert d.dtype == np.float32 and d.min() == 0 and d.max() == pytest.approx(1)
    assert np.all(d[labels == 0] == 0) and np.all(d[labels > 0] > 0)
    assert d[15, 10] == pytest.approx(1)
    for lab in (1, 2):
        assert d[labels == lab].max() == pytest.approx(1)
    # Brute force for one pixel of the square: distance to the nearest non-label pixel / max.
    ref = ndi.distance_transform_edt(np.pad(labels == 2, 1))[1:-1, 1:-1]
    assert d[8, 25] == pytest.approx(ref[8, 25] / ref[labels == 2].max())


def test_loss_weights_balance_and_gap_emphasis():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 5:25] = 1
    labels[10:30, 27:47] = 2  # 2-px gap between 1 and 2
    w = loss_weights(labels, w0=0)
    fg = labels > 0
    assert w[fg].sum() == pytest.approx(w[~fg].sum(), rel=1e-5)
    w = loss_weights(labels, w0=10, sigma=5)
    gap, far = w[20, 25], w[2, 58]
    assert gap > far + 5  # exp(-(1+2)^2/50) * 10 ~ 8.4 more between the nuclei
    assert gap == pytest.approx(loss_weights(labels, w0=0)[20, 25] + 10 * np.exp(-((1 + 2) ** 2) / 50), rel=1e-4)


def test_augmentation_warps_image_and_targets_together():
    rng = np.random.default_rng(0)
    labels = np.zeros((128, 128), np.int32)
    yy, xx = np.mgrid[:128, :128]
    for k, (cy, cx) in enumerate(rng.uniform(10, 118, (25, 2)), 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = k
    mask = (labels > 0).astype(np.float32)
    rgb = np.stack([mask * 255, mask * 0, 255 - mask * 255], -1).astype(np.uint8)
    geo_only = AugmentConfig(stain=0, brightness=0, contrast=0, blur_p=0)
    for seed in range(5):
        img, (m,) = augment_sample(np.random.default_rng(seed), rgb, [mask], 64, geo_only, nearest=[True])
        assert img.shape == (64, 64, 3) and img.dtype == np.float32 and m.shape == (64, 64)
        assert set(np.unique(m)) <= {0.0, 1.0}
        agree = np.mean((img[..., 0] > 0.5) == (m > 0.5))
        assert agree > 0.97
    full = AugmentConfig()
    img, _ = augment_sample(np.random.default_rng(1), rgb, [mask], 64, full)
    assert 0 <= img.min() and img.max() <= 1
    a, _ = augment_sample(np.random.default_rng(7), rgb, [mask], 64, full)
    b, _ = augment_sample(np.random.default_rng(7), rgb, [mask], 64, full)
    np.testing.assert_array_equal(a, b)  # seeded
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        augment_sample(rng, mask, [mask], 64, full)


def test_no_augmentation_is_a_plain_crop():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    img, _ = augment_sample(np.random.default_rng(0), rgb, [], 50, AugmentConfig.none())
    np.testing.assert_allclose(img, rgb / 255.0, atol=1e-6)


def test_augment_config_merged_replaces_and_checks_fields():
    base = AugmentConfig()
    light = base.merged({"rotate": False, "scale": [1, 1], "elastic_alpha": 0, "blur_p": 0})
    assert light.rotate is False and light.scale == (1.0, 1.0) and light.elastic_alpha == 0.0 and light.blur_p == 0.0
    assert light.stain == base.stain and light.flip is True  # the rest unchanged
    assert base.merged({}) == base
    for bad, match in [
        ({"elastic": 1}, "unknown augment field 'elastic'"),
        ({"flip": 1}, "flip must be true or false"),
        ({"scale": [1.2, 0.8]}, "scale must be"),
        ({"scale": [0, 1]}, "scale must be"),
        ({"scale": 1.0}, "scale must be"),
        ({"stain": -0.1}, "stain must be a finite number >= 0"),
        ({"blur_sigma": float("nan")}, "blur_sigma must be a finite number"),
        ({"contrast": "0.1"}, "contrast must be a finite number"),
        ({"blur_p": 1.5}, "blur_p is a probability"),
    ]:
        with pytest.raises(ValueError, match=match):
            base.merged(bad)
    with pytest.raises(ValueError, match="must be a dict"):
        base.merged([("flip", False)])
