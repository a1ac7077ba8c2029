"""Batched torch augmentation: the same geometry and colour as the scipy path, on any device."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy import ndimage as ndi  # noqa: E402

from nucseg.batch_augment import CropDraw, draw_crop, render_batch, stack_sources  # noqa: E402
from nucseg.data import AugmentConfig  # noqa: E402

NO_COLOUR = dict(stain=0, brightness=0, contrast=0, blur_p=0, hed_scale=(0, 0, 0), hed_shift=(0, 0, 0), jpeg_p=0)
GEOMETRY = AugmentConfig(elastic_alpha=0, **NO_COLOUR)


def _image(h=80, w=96, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (rng.random((h, w)) < 0.3).astype(np.float32)
    return rgb, mask, rng.random((h, w)).astype(np.float32)


def _plain(**kw) -> CropDraw:
    base = dict(image=0, scale=1.0, theta=0.0, flip=False, cy=40.0, cx=48.0, field=np.zeros((2, 0, 0), np.float32),
                stain_alpha=np.ones(3), stain_beta=np.zeros(3), contrast=1.0, brightness=0.0, blur=0.0, jpeg=0)
    base.update(kw)
    return CropDraw(**base)


def test_identity_draw_is_an_exact_crop():
    rgb, mask, dist = _image()
    src = [stack_sources(rgb, [mask, dist], "cpu")]
    img, t = render_batch([_plain(cy=40.5, cx=47.5)], src, 32, GEOMETRY, nearest=[True, False])
    # Centre 40.5/47.5 with an even side: the crop is rows 25..56, columns 32..63, pixel for pixel.
    # float32 normalised coordinates: exact up to ~1e-5 of a pixel step.
    np.testing.assert_allclose(img[0].permute(1, 2, 0).numpy(), rgb[25:57, 32:64] / 255.0, atol=2e-5)
    np.testing.assert_array_equal(t[0, 0].numpy(), mask[25:57, 32:64])
    np.testing.assert_allclose(t[0, 1].numpy(), dist[25:57, 32:64], atol=2e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_rotated_scaled_crop_equals_scipy_map_coordinates(flip):
    rgb, mask, dist = _image(seed=1)
    d = _plain(theta=0.7, scale=1.2, flip=flip, cy=37.3, cx=51.9)
    img, t = render_batch([d], [stack_sources(rgb, [mask, dist], "cpu")], 40, GEOMETRY, nearest=[True, False])
    # The same grid through scipy (bilinear, mirror = grid_sample's reflection with align_corners).
    c = np.arange(40, dtype=np.float64) - 19.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    xx = -xx if flip else xx
    ys = (np.cos(0.7) * yy - np.sin(0.7) * xx) / 1.2 + 37.3
    xs = (np.sin(0.7) * yy + np.cos(0.7) * xx) / 1.2 + 51.9
    ref = np.stack([ndi.map_coordinates(rgb[..., k] / 255.0, [ys, xs], order=1, mode="mirror") for k in range(3)])
    np.testing.assert_allclose(img[0].numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(t[0, 1].numpy(), ndi.map_coordinates(dist, [ys, xs], order=1, mode="mirror"), atol=1e-5)
    ref_mask = ndi.map_coordinates(mask, [ys, xs], order=0, mode="mirror")
    assert set(np.unique(t[0, 0].numpy())) <= {0.0, 1.0}  # nearest: a mask stays binary
    assert (t[0, 0].numpy() == ref_mask).mean() > 0.98  # rounding of exact half-way points may differ


def test_stain_jitter_equals_the_numpy_path():
    rgb = _image()[0] / 255.0  # random colours: negative densities included, not clamped on either path
    alpha, beta = np.array([2.1, 0.5, 1.05]), np.array([0.012, -0.008, 0.001])
    from nucseg import batch_augment
    from nucseg.data import stain_jitter

    got = batch_augment._stain_jitter(torch.tensor(rgb, dtype=torch.float64).permute(2, 0, 1)[None],
                                      torch.tensor(alpha)[None], torch.tensor(beta)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, stain_jitter(rgb, alpha, beta), atol=1e-6)  # numpy path returns float32
    identity = batch_augment._stain_jitter(torch.tensor(rgb, dtype=torch.float64).permute(2, 0, 1)[None],
                                           torch.ones(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    np.testing.assert_allclose(identity[0].permute(1, 2, 0).numpy(), rgb, atol=2e-6)  # 0 reads as 1e-6


def test_colour_chain_equals_the_numpy_paths():
    # A fixed draw without geometry: stain, contrast, brightness and blur as augment_sample applies them.
    from nucseg.data import stain_jitter

    rgb, mask, _ = _image(seed=4)
    rgb = ndi.gaussian_filter(rgb.astype(np.float64), (2, 2, 0)).round().astype(np.uint8)
    alpha, beta = np.array([1.5, 0.7, 1.0]), np.array([0.005, -0.003, 0.0])
    d = _plain(cy=40.5, cx=47.5, stain_alpha=alpha, stain_beta=beta, contrast=1.2, brightness=-0.03, blur=0.9)
    img, _ = render_batch([d], [stack_sources(rgb, [mask], "cpu")], 32, AugmentConfig(**{**NO_COLOUR, "stain": 0.1}),
                          nearest=[True])
    ref = stain_jitter(rgb[25:57, 32:64] / 255.0, alpha, beta)
    ref = (ref - 0.5) * 1.2 + 0.5 - 0.03
    ref = np.clip(ndi.gaussian_filter(ref, (0.9, 0.9, 0)), 0, 1)
    np.testing.assert_allclose(img[0].permute(1, 2, 0).numpy()[4:-4, 4:-4], ref[4:-4, 4:-4], atol=1e-5)


def test_jpeg_is_pillows_round_trip_of_the_rendered_crop():
    from nucseg.data import jpeg_roundtrip

    rgb, mask, _ = _image(seed=5)
    src = [stack_sources(rgb, [mask], "cpu")]
    plain, _ = render_batch([_plain(cy=40.5, cx=47.5)], src, 32, GEOMETRY, nearest=[True])
    got, t = render_batch([_plain(cy=40.5, cx=47.5, jpeg=40), _plain(cy=40.5, cx=47.5)], src, 32, GEOMETRY, nearest=[True])
    want = jpeg_roundtrip(plain[0].permute(1, 2, 0).numpy(), 40)
    np.testing.assert_array_equal(got[0].permute(1, 2, 0).numpy(), want)
    assert np.abs(want - plain[0].permute(1, 2, 0).numpy()).mean() > 2 / 255  # random pixels: heavy artefacts
    np.testing.assert_array_equal(got[1].numpy(), plain[0].numpy())  # a crop without a JPEG draw is untouched
    np.testing.assert_array_equal(t[0, 0].numpy(), t[1, 0].numpy())  # targets never compressed


def test_colour_draws_have_the_numpy_paths_distribution():
    aug = AugmentConfig(jpeg_p=0.3, jpeg_quality=(50, 52))
    rng = np.random.default_rng(2)
    draws = [draw_crop(rng, [(128, 128)], 64, aug) for _ in range(3000)]
    log_a = np.log([d.stain_alpha for d in draws])
    beta = np.array([d.stain_beta for d in draws])
    assert (np.abs(log_a) <= np.array(aug.hed_scale) + 1e-12).all() and (np.abs(beta) <= np.array(aug.hed_shift) + 1e-12).all()
    np.testing.assert_allclose(log_a.var(axis=0), np.array(aug.hed_scale) ** 2 / 3, rtol=0.1)
    q = np.array([d.jpeg for d in draws])
    assert abs((q > 0).mean() - 0.3) < 0.03 and set(q[q > 0].tolist()) == {50, 51, 52}
    blurred = np.array([d.blur for d in draws])
    assert abs((blurred > 0).mean() - aug.blur_p) < 0.03 and blurred.max() <= aug.blur_sigma


def test_draws_are_seeded_and_in_range():
    aug = AugmentConfig()
    shapes = [(512, 512), (300, 400)]
    a = [draw_crop(np.random.default_rng(3), shapes, 256, aug) for _ in range(2)]
    assert all(np.array_equal(getattr(a[0], f.name), getattr(a[1], f.name)) for f in dataclasses.fields(CropDraw))
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = draw_crop(rng, shapes, 256, aug)
        h, w = shapes[d.image]
        assert 0.8 <= d.scale <= 1.25 and 0 <= d.theta < 2 * np.pi
        assert -0.5 <= d.cy <= h - 0.5 and -0.5 <= d.cx <= w - 0.5
        assert d.field.shape == (2, 64, 64) and 0 <= d.blur <= aug.blur_sigma
    none = draw_crop(rng, shapes, 64, AugmentConfig.none())
    assert none.theta == 0 and none.scale == 1 and not none.flip and none.field.size == 0 and none.blur == 0


def test_full_augmentation_keeps_targets_aligned_with_the_image():
    # Dark disks on a light background: wherever the warped mask says nucleus, the warped image is dark.
    yy, xx = np.mgrid[:128, :128]
    mask = ((yy - 40) ** 2 + (xx - 50) ** 2 < 225) | ((yy - 90) ** 2 + (xx - 80) ** 2 < 300)
    rgb = np.where(mask[..., None], 60, 220).astype(np.uint8).repeat(3, axis=2)
    src = [stack_sources(rgb, [mask.astype(np.float32)], "cpu")]
    aug = AugmentConfig(**NO_COLOUR)
    rng = np.random.default_rng(5)
    draws = [draw_crop(rng, [(128, 128)], 64, aug) for _ in range(8)]
    img, t = render_batch(draws, src, 64, aug, nearest=[True])
    grey = img.mean(dim=1)
    inside, outside = grey[t[:, 0] == 1], grey[t[:, 0] == 0]
    assert inside.numel() > 0 and outside.numel() > 0
    assert inside.mean() < 0.35 and outside.mean() > 0.75
    # Colour jitter on: still in [0, 1], still mostly dark inside.
    img2, _ = render_batch(draws, src, 64, AugmentConfig(), nearest=[True])
    assert 0 <= float(img2.min()) and float(img2.max()) <= 1


def test_blur_matches_scipy():
    from nucseg import batch_augment

    x = torch.rand(3, 30, 40, dtype=torch.float64)
    got = batch_augment._blur(x, 1.1).numpy()
    ref = np.stack([ndi.gaussian_filter(c, 1.1, mode="reflect", truncate=4.0) for c in x.numpy()])
    # scipy's "reflect" is (d c b a | a b c d); torch's is (d c b | a b c d): they differ next to the border.
    np.testing.assert_allclose(got[:, 5:-5, 5:-5], ref[:, 5:-5, 5:-5], atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_render_matches_cpu():
    rgb, mask, dist = _image(seed=2)
    rng = np.random.default_rng(1)
    draws = [draw_crop(rng, [(80, 96)], 48, AugmentConfig()) for _ in range(4)]
    cpu = render_batch(draws, [stack_sources(rgb, [mask, dist], "cpu")], 48, AugmentConfig(), nearest=[True, False])
    gpu = render_batch(draws, [stack_sources(rgb, [mask, dist], "cuda")], 48, AugmentConfig(), nearest=[True, False])
    np.testing.assert_allclose(gpu[0].cpu().numpy(), cpu[0].numpy(), atol=1e-3)
    assert (gpu[1][:, 0].cpu() == cpu[1][:, 0]).float().mean() > 0.99


def test_elastic_field_has_the_scipy_paths_amplitude_and_smoothness():
    from nucseg import batch_augment
    from nucseg.data import _sampling_grid

    aug = AugmentConfig(flip=False, rotate=False, scale=(1, 1))
    size, lag = 128, 12
    c = np.arange(size) - (size - 1) / 2

    def autocorr(f):
        f = f - f.mean()
        return float((f[:, lag:] * f[:, :-lag]).mean() / f.var())

    ref, got = [], []
    rng = np.random.default_rng(0)
    for _ in range(12):
        grid = _sampling_grid(rng, (512, 512), size, aug)  # identity + field + centre
        fx = grid[1] - c[None, :] - (grid[1] - c[None, :]).mean()
        ref.append((fx.std(), autocorr(fx)))
        d = draw_crop(rng, [(512, 512)], size, aug)
        g = batch_augment._grid(d, size, 512, 512, aug, torch.device("cpu"))
        tx = (g[..., 0].numpy() + 1) * 511 / 2 - c[None, :] - d.cx
        got.append((tx.std(), autocorr(tx)))
    ref, got = np.mean(ref, axis=0), np.mean(got, axis=0)
    assert got[0] == pytest.approx(aug.elastic_alpha, rel=0.05) and ref[0] == pytest.approx(aug.elastic_alpha, rel=0.05)
    assert got[1] == pytest.approx(ref[1], abs=0.1)  # same smoothness: correlation at 12 px
