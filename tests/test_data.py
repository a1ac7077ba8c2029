"""TNBC loader, splits, training targets and augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nucseg.data import (
    HED_SCALE,
    HED_SHIFT,
    LEGACY_FIELDS,
    AugmentConfig,
    augment_sample,
    draw_jpeg,
    draw_stain,
    hed_to_rgb,
    jpeg_roundtrip,
    rgb_to_hed,
    stain_jitter,
    grouped_kfold,
    instance_distance,
    leave_one_patient_out,
    load_tnbc,
    loss_weights,
    mask_to_instances,
    read_rgb,
)

NO_STAIN_NO_JPEG = dict(hed_scale=(0, 0, 0), hed_shift=(0, 0, 0), jpeg_p=0)


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
    geo_only = AugmentConfig(stain=0, brightness=0, contrast=0, blur_p=0, **NO_STAIN_NO_JPEG)
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


# --------------------------------------------------------------------------- colour augmentation


def _he_like(size=48, seed=0) -> np.ndarray:
    """An RGB image in [0, 1] made from smooth, positive H, E, D densities (where skimage's clamp does nothing)."""
    from skimage.color import hed2rgb

    rng = np.random.default_rng(seed)
    hed = np.stack([ndi.gaussian_filter(rng.random((size, size)), 3) for _ in range(3)], -1)
    hed = hed / hed.max(axis=(0, 1)) * np.array([0.06, 0.03, 0.01]) + np.array([0.005, 0.004, 0.002])
    return hed2rgb(hed)


def test_hed_conversion_is_the_identity_and_matches_skimage_where_it_does_not_clamp():
    rgb = np.random.default_rng(0).random((20, 30, 3)) * 0.98 + 0.01  # negative densities included
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(rgb)), rgb, atol=1e-12)
    np.testing.assert_allclose(stain_jitter(rgb, np.ones(3), np.zeros(3)), rgb, atol=1e-6)  # float32 rounding
    from skimage.color import rgb2hed

    he = _he_like()
    np.testing.assert_allclose(rgb_to_hed(he), rgb2hed(he), atol=1e-12)
    assert (rgb_to_hed(rgb) < 0).any()  # skimage would have clamped these


def test_stain_jitter_scales_and_shifts_each_density():
    from skimage.color import hed2rgb, rgb2hed

    he = _he_like(seed=1)
    alpha, beta = np.array([1.8, 0.6, 1.2]), np.array([0.004, -0.002, 0.001])
    out = stain_jitter(he, alpha, beta)
    # Checked with scikit-image on both sides: the densities of the result are the scaled ones.
    np.testing.assert_allclose(rgb2hed(out.astype(np.float64)), rgb2hed(he) * alpha + beta, atol=2e-5)
    np.testing.assert_allclose(out, np.clip(hed2rgb(rgb2hed(he) * alpha + beta), 0, 1), atol=1e-6)
    darker = stain_jitter(he, np.array([2.0, 1.0, 1.0]), np.zeros(3))
    assert darker.mean() < he.mean() - 0.02  # more haematoxylin absorbs more light


def test_stain_draws_follow_the_configured_ranges():
    aug = AugmentConfig(hed_scale=(0.8, 0.4, 0.0), hed_shift=(0.01, 0.0, 0.005))
    rng = np.random.default_rng(0)
    draws = [draw_stain(rng, aug) for _ in range(4000)]
    log_a = np.log([a for a, _ in draws])
    b = np.array([b for _, b in draws])
    for c, (s, sh) in enumerate(zip(aug.hed_scale, aug.hed_shift)):
        assert np.abs(log_a[:, c]).max() <= s + 1e-12 and np.abs(b[:, c]).max() <= sh + 1e-12
        if s:  # ln alpha uniform on [-s, s]: mean 0, variance s^2 / 3, both ends reached
            assert abs(log_a[:, c].mean()) < 0.05 * s and log_a[:, c].var() == pytest.approx(s * s / 3, rel=0.1)
            assert np.abs(log_a[:, c]).max() > 0.99 * s
        if sh:
            assert b[:, c].var() == pytest.approx(sh * sh / 3, rel=0.1)
    np.testing.assert_array_equal(log_a[:, 2], 0)


def test_legacy_stain_draws_as_before_and_none_draws_nothing():
    aug = AugmentConfig(stain=0.15, **NO_STAIN_NO_JPEG)
    alpha, beta = draw_stain(np.random.default_rng(4), aug)
    ref = np.random.default_rng(4)  # the former _stain_jitter's two draws
    np.testing.assert_allclose(alpha, 1 + ref.uniform(-0.15, 0.15, 3), rtol=1e-15)
    np.testing.assert_allclose(beta, ref.uniform(-0.15, 0.15, 3) * 0.05, rtol=1e-15)
    rng = np.random.default_rng(4)
    alpha, beta = draw_stain(rng, AugmentConfig.none())
    np.testing.assert_array_equal(alpha, 1)
    np.testing.assert_array_equal(beta, 0)
    assert rng.random() == np.random.default_rng(4).random()  # the stream was not touched


def test_jpeg_roundtrip_changes_an_image_by_a_bounded_amount():
    he = _he_like(64, seed=2).astype(np.float32)
    diffs = {q: float(np.abs(jpeg_roundtrip(he, q) - he).mean()) for q in (30, 60, 100)}
    assert diffs[30] > diffs[60] > diffs[100]
    assert 1 / 255 < diffs[30] < 10 / 255  # visible blocks, same image
    assert diffs[100] < 1 / 255  # quality 100 nearly does nothing (8-bit rounding, chroma subsampling)
    out = jpeg_roundtrip(he, 50)
    assert out.dtype == np.float32 and out.shape == he.shape
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)  # decoded 8-bit values
    for bad in (0, 101, 50.0, True):
        with pytest.raises(ValueError, match="quality must be an integer in"):
            jpeg_roundtrip(he, bad)


def test_jpeg_draws_follow_the_configured_probability_and_qualities():
    aug = AugmentConfig(jpeg_p=0.25, jpeg_quality=(40, 44))
    rng = np.random.default_rng(1)
    q = np.array([draw_jpeg(rng, aug) for _ in range(4000)])
    assert abs((q > 0).mean() - 0.25) < 0.03  # binomial sd 0.007
    assert set(q[q > 0].tolist()) == {40, 41, 42, 43, 44}
    rng = np.random.default_rng(1)
    assert draw_jpeg(rng, AugmentConfig(jpeg_p=0)) == 0
    assert rng.random() == np.random.default_rng(1).random()


def test_augment_sample_applies_the_drawn_stain_and_jpeg():
    rgb = (_he_like(40, seed=3) * 255).round().astype(np.uint8)
    # A plain full-size crop draws nothing for its geometry, so the colour draws come first.
    hed_only = AugmentConfig.none().merged({"hed_scale": HED_SCALE, "hed_shift": HED_SHIFT})
    img, _ = augment_sample(np.random.default_rng(5), rgb, [], 40, hed_only)
    want = stain_jitter(rgb / 255.0, *draw_stain(np.random.default_rng(5), hed_only))
    np.testing.assert_allclose(img, want, atol=1e-5)
    assert np.abs(img - rgb / 255.0).mean() > 0.005
    jpeg_only = AugmentConfig.none().merged({"jpeg_p": 1.0, "jpeg_quality": [35, 35]})
    img, _ = augment_sample(np.random.default_rng(5), rgb, [], 40, jpeg_only)
    np.testing.assert_array_equal(img, jpeg_roundtrip(rgb / 255.0, 35))


def test_augment_config_validates_new_fields_on_construction_and_merge():
    for bad, match in [
        ({"hed_scale": [0.1, 0.1]}, "hed_scale must be"),
        ({"hed_scale": [0.1, -0.1, 0.1]}, "hed_scale must be"),
        ({"hed_shift": [0.1, float("inf"), 0.1]}, "hed_shift must be"),
        ({"hed_shift": 0.01}, "hed_shift must be"),
        ({"jpeg_p": 1.5}, "jpeg_p is a probability"),
        ({"jpeg_p": -0.1}, "jpeg_p must be a finite number"),
        ({"jpeg_quality": [0, 50]}, "jpeg_quality must be"),
        ({"jpeg_quality": [60, 50]}, "jpeg_quality must be"),
        ({"jpeg_quality": [30, 101]}, "jpeg_quality must be"),
        ({"jpeg_quality": [30.0, 90]}, "jpeg_quality must be"),
        ({"stain": True}, "stain must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=match):
            AugmentConfig().merged(bad)
        with pytest.raises(ValueError, match=match):
            AugmentConfig(**bad)
    ok = AugmentConfig().merged({"hed_scale": [1, 0, 0.5], "jpeg_quality": [30, 30]})
    assert ok.hed_scale == (1.0, 0.0, 0.5) and ok.jpeg_quality == (30, 30)


def test_defaults_are_the_measured_ranges_and_round_trip():
    aug = AugmentConfig()
    assert aug.hed_scale == HED_SCALE and aug.hed_shift == HED_SHIFT and aug.stain == 0 and aug.stain_on
    assert 0 < aug.jpeg_p <= 1 and aug.blur_p > 0 and aug.blur_sigma > 0.3  # blur, JPEG and HED all on
    assert AugmentConfig.from_dict(aug.to_dict()) == aug
    assert not AugmentConfig.none().stain_on and AugmentConfig.none().jpeg_p == 0


def test_old_augment_dict_loads_with_the_behaviour_it_was_trained_with():
    import json
    from importlib.resources import files

    doc = json.loads((files("nucseg") / "models" / "weights" / "default.json").read_text())
    old = doc["training"]["recipe"]["augment"]
    assert "hed_scale" not in old and "jpeg_p" not in old  # written before issue 17
    aug = AugmentConfig.from_dict(old)
    assert aug.stain == 0.15 and aug.hed_scale == (0, 0, 0) and aug.hed_shift == (0, 0, 0) and aug.jpeg_p == 0
    assert aug.contrast == old["contrast"] == 0.12 and aug.scale == (0.8, 1.25)
    assert AugmentConfig.from_dict({}) == AugmentConfig(**LEGACY_FIELDS)
    with pytest.raises(ValueError, match="unknown augment field 'hue'"):
        AugmentConfig.from_dict({**old, "hue": 0.1})
