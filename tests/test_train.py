"""Training: loss, overfitting a synthetic image, checkpoints that resume exactly and never pickle."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nucseg.data import AugmentConfig, TNBCImage, mask_to_instances  # noqa: E402
from nucseg.inference import load_model  # noqa: E402
from nucseg.metrics import pixel_scores  # noqa: E402
from nucseg.train import TrainConfig, image_digest, load_checkpoint, preset, seg_loss, train  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _synthetic_image(size=96, seed=0) -> TNBCImage:
    """Dark purple disks on a pink background, with noise, like a cartoon H&E."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for cy, cx in rng.uniform(8, size - 8, (14, 2)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(16, 40)
    bg, fg = np.array([230, 170, 200]), np.array([90, 50, 140])
    rgb = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return TNBCImage("01", "01_1", rgb, mask, mask_to_instances(mask))


TINY = dict(
    arch="unet",
    arch_kwargs={"width": 8, "depth": 2},
    out_channels=2,
    batch_size=4,
    crop=48,
    optimizer="adamw",
    lr=1e-2,
    warmup=5,
    augment=AugmentConfig(rotate=False, elastic_alpha=0, stain=0, brightness=0, contrast=0, blur_p=0, scale=(1, 1),
                          hed_scale=(0, 0, 0), hed_shift=(0, 0, 0), jpeg_p=0),
)


def test_tiny_model_overfits_a_synthetic_image(tmp_path):
    im = _synthetic_image()
    res = train(TrainConfig(iterations=60, checkpoint_every=1000, **TINY), [im], tmp_path, tune=False)
    model = load_model(res.model_path, device="cpu")
    prob = model.predict(im.rgb)
    f1 = pixel_scores(prob > 0.25, im.mask).f1  # map > 0.25 ~ nucleus probability > 0.5
    assert f1 > 0.9
    assert res.iterations == 60 and res.final_loss < 1.0


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    im = _synthetic_image(64)
    cfg = TrainConfig(iterations=8, checkpoint_every=2, **{**TINY, "crop": 32})
    full = train(cfg, [im], tmp_path / "a", tune=False)
    part = train(cfg, [im], tmp_path / "b", tune=False, stop_after=3)
    assert part.iterations == 3 and not (tmp_path / "b" / "model.safetensors").exists()
    done = train(cfg, [im], tmp_path / "b", tune=False)
    assert done.iterations == 8
    a = load_model(full.model_path, device="cpu").net.state_dict()
    b = load_model(done.model_path, device="cpu").net.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoints_are_safetensors_and_json_only(tmp_path, monkeypatch):
    im = _synthetic_image(64)
    for opt in ("sgd", "adamw"):
        cfg = TrainConfig(iterations=2, checkpoint_every=1, **{**TINY, "crop": 32, "optimizer": opt})
        out = tmp_path / opt
        train(cfg, [im], out, tune=False)
        assert {p.suffix for p in out.iterdir()} == {".safetensors", ".json"}

        def refuse(*args, **kwargs):
            raise AssertionError("pickle used while loading a checkpoint")

        with monkeypatch.context() as m:
            m.setattr(pickle, "load", refuse)
            m.setattr(pickle, "loads", refuse)
            m.setattr(torch, "load", refuse)
            from nucseg.models import build_model
            from nucseg.train import _make_optimizer

            net = build_model("unet", 3, 2, width=8, depth=2)
            optim = _make_optimizer(net, cfg)
            doc = load_checkpoint(out, net, optim)
        assert doc["step"] == 2 and len(optim.state) == len(list(net.parameters()))


def test_resume_refuses_another_recipe(tmp_path):
    im = _synthetic_image(64)
    train(TrainConfig(iterations=1, **{**TINY, "crop": 32}), [im], tmp_path, tune=False)
    with pytest.raises(ValueError, match="different recipe"):
        train(TrainConfig(iterations=1, seed=5, **{**TINY, "crop": 32}), [im], tmp_path, tune=False)


def test_model_json_records_the_recipe_and_tuned_parameters(tmp_path):
    im = _synthetic_image(64)
    res = train(TrainConfig(iterations=3, **{**TINY, "crop": 32}), [im], tmp_path, name="tiny", tune=True)
    doc = json.loads(res.model_path.with_suffix(".json").read_text())
    assert doc["config"]["name"] == "tiny" and doc["config"]["halo"] % 4 == 0
    tuned = doc["training"]["tuned_on_training_images"]
    assert tuned["lam"] == doc["config"]["lam"] and tuned["threshold"] == doc["config"]["threshold"]
    assert doc["training"]["recipe"]["iterations"] == 3


def test_tuned_model_is_written_once_and_never_reloaded(tmp_path, monkeypatch):
    """Tuning runs on the trained network in memory; the files are written once, after it."""
    import nucseg.inference
    import nucseg.train

    writes = []
    real_save = nucseg.train.save_model

    def counting_save(net, config, path, **extra):
        writes.append(config)
        return real_save(net, config, path, **extra)

    def no_reload(*args, **kwargs):
        raise AssertionError("train() reloaded the model it had just saved")

    monkeypatch.setattr(nucseg.train, "save_model", counting_save)
    monkeypatch.setattr(nucseg.inference, "load_model", no_reload)
    im = _synthetic_image(64)
    res = train(TrainConfig(iterations=3, **{**TINY, "crop": 32}), [im], tmp_path, name="tiny", tune=True)
    assert len(writes) == 1
    doc = json.loads(res.model_path.with_suffix(".json").read_text())
    assert doc["config"]["min_area"] == writes[0].min_area == doc["training"]["tuned_on_training_images"]["min_area"]
    monkeypatch.undo()
    assert load_model(res.model_path, device="cpu").config == writes[0]  # the checksum verifies too


def test_weighted_loss_by_hand():
    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere: each pixel's log loss is log 2
    mask = torch.tensor([[[1.0, 0.0]]])
    w = torch.tensor([[[3.0, 1.0]]])
    d = torch.tensor([[[0.5, 0.0]]])
    loss = seg_loss(logits[:, :1], mask, w, None, 1.0)
    assert float(loss) == pytest.approx(np.log(2))
    logits = torch.tensor([[[[2.0, -2.0]], [[0.0, 0.0]]]])
    ce = np.array([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-2.0))])
    expected = (3 * ce[0] + 1 * ce[1]) / 4 + np.log(2)
    assert float(seg_loss(logits, mask, w, d, 1.0)) == pytest.approx(expected, rel=1e-5)


def test_bad_configs(tmp_path):
    im = _synthetic_image(64)
    with pytest.raises(ValueError, match="multiple of the unet stride"):
        train(TrainConfig(iterations=1, **{**TINY, "crop": 30}), [im], tmp_path / "a")
    with pytest.raises(ValueError, match="optimizer"):
        train(TrainConfig(iterations=1, **{**TINY, "crop": 32, "optimizer": "adam"}), [im], tmp_path / "b")
    with pytest.raises(ValueError, match="empty"):
        train(TrainConfig(), [], tmp_path / "c")
    with pytest.raises(ValueError, match="encoder-weights applies to VGG"):
        train(TrainConfig(iterations=1, encoder_weights="x.pth", **{**TINY, "crop": 32}), [im], tmp_path / "d")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("resnet")


def test_presets():
    assert preset("default").out_channels == 2
    assert preset("fcn8s").optimizer == "sgd" and preset("fcn8s").momentum == 0.9
    assert preset("fcn8s").weight_decay == 5e-5
    assert preset("unet", arch_kwargs={"width": 8}).arch_kwargs == {"width": 8, "depth": 4}
    still = preset("default", augment={"rotate": False, "elastic_alpha": 0})
    assert not still.augment.rotate and still.augment.elastic_alpha == 0 and still.augment.scale == preset("default").augment.scale
    assert TrainConfig.from_dict(json.loads(json.dumps(still.to_dict()))) == still
    cfg = preset("default")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_loader_processes_do_not_change_the_run(tmp_path):
    # Batches are seeded per step, so augmenting them in 2 processes gives the same weights.
    im = _synthetic_image(64)
    cfg = TrainConfig(iterations=6, checkpoint_every=100, **{**TINY, "crop": 32})
    a = train(cfg, [im], tmp_path / "a", tune=False)
    b = train(cfg, [im], tmp_path / "b", tune=False, workers=2)
    sa = load_model(a.model_path, device="cpu").net.state_dict()
    sb = load_model(b.model_path, device="cpu").net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads(b.model_path.with_suffix(".json").read_text())["training"]["loader_workers"] == 2


def test_bad_device_and_workers(tmp_path):
    im = _synthetic_image(32)
    cfg = TrainConfig(iterations=1, **{**TINY, "crop": 32})
    with pytest.raises(ValueError, match="workers must be"):
        train(cfg, [im], tmp_path, workers=-1)
    with pytest.raises(ValueError, match="device must be"):
        train(cfg, [im], tmp_path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train(cfg, [im], tmp_path, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_matches_cpu_and_overfits(tmp_path):
    im = _synthetic_image()
    one = TrainConfig(iterations=1, checkpoint_every=1000, **TINY)
    cpu = train(one, [im], tmp_path / "cpu1", tune=False, device="cpu")
    gpu = train(one, [im], tmp_path / "gpu1", tune=False, device="cuda")
    # Same init and batch: the first loss agrees up to TF32/cuDNN rounding.
    assert gpu.final_loss == pytest.approx(cpu.final_loss, rel=2e-2)
    res = train(TrainConfig(iterations=60, checkpoint_every=20, **TINY), [im], tmp_path / "gpu", tune=True, device="cuda", workers=2)
    doc = json.loads(res.model_path.with_suffix(".json").read_text())
    assert doc["training"]["device"].startswith("cuda")
    model = load_model(res.model_path, device="cpu")  # a GPU-trained model loads on the CPU
    assert pixel_scores(model.predict(im.rgb) > 0.25, im.mask).f1 > 0.9


def test_device_augmentation_trains_and_resumes_exactly(tmp_path):
    im = _synthetic_image()
    aug = dict(TINY, augment=AugmentConfig(elastic_alpha=2.0, elastic_sigma=8.0, stain=0.05, blur_p=0.2,
                                           hed_scale=(0, 0, 0), hed_shift=(0, 0, 0), jpeg_p=0.2),
               augment_on="device")
    res = train(TrainConfig(iterations=60, checkpoint_every=1000, **aug), [im], tmp_path / "fit", tune=False)
    model = load_model(res.model_path, device="cpu")
    assert pixel_scores(model.predict(im.rgb) > 0.25, im.mask).f1 > 0.9
    doc = json.loads(res.model_path.with_suffix(".json").read_text())
    assert doc["training"]["recipe"]["augment_on"] == "device"
    cfg = TrainConfig(iterations=6, checkpoint_every=2, **{**aug, "crop": 32})
    full = train(cfg, [im], tmp_path / "a", tune=False)
    train(cfg, [im], tmp_path / "b", tune=False, stop_after=3)
    done = train(cfg, [im], tmp_path / "b", tune=False)
    a = load_model(full.model_path, device="cpu").net.state_dict()
    b = load_model(done.model_path, device="cpu").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="augment_on must be"):
        train(TrainConfig(iterations=1, **{**aug, "augment_on": "gpu"}), [im], tmp_path / "c", tune=False)


def test_checkpoint_of_a_recipe_without_a_newer_field_resumes(tmp_path):
    # A checkpoint written before TrainConfig had augment_on resumes under the default.
    im = _synthetic_image(64)
    cfg = TrainConfig(iterations=4, checkpoint_every=2, **{**TINY, "crop": 32})
    train(cfg, [im], tmp_path, tune=False, stop_after=2)
    meta = tmp_path / "checkpoint.json"
    doc = json.loads(meta.read_text())
    del doc["config"]["augment_on"]
    meta.write_text(json.dumps(doc))
    assert train(cfg, [im], tmp_path, tune=False).iterations == 4


def test_init_weights_start_from_a_trained_model(tmp_path):
    im = _synthetic_image()
    first = train(TrainConfig(iterations=60, checkpoint_every=1000, **TINY), [im], tmp_path / "a", tune=False)
    # Zero steps from the trained model: the saved network is that model, bit for bit.
    same = train(TrainConfig(iterations=0, init_weights=str(first.model_path), **TINY), [im], tmp_path / "b", tune=False)
    a = load_model(first.model_path, device="cpu")
    b = load_model(same.model_path, device="cpu")
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    doc = json.loads(same.model_path.with_suffix(".json").read_text())["training"]
    assert doc["init_weights"]["sha256"] == a.sha256 and doc["init_weights"]["patients"] == ["01"]
    assert doc["patients"] == ["01"] and doc["image_digests"] == [image_digest(im.rgb)]
    # Three more steps at a low rate keep what the model learnt; three steps from scratch learn nothing.
    few = dict(TINY, lr=1e-3, warmup=1)
    tuned = train(TrainConfig(iterations=3, init_weights=str(first.model_path), **few), [im], tmp_path / "c", tune=False)
    fresh = train(TrainConfig(iterations=3, **few), [im], tmp_path / "d", tune=False)
    f1 = {k: pixel_scores(load_model(r.model_path, device="cpu").predict(im.rgb) > 0.25, im.mask).f1 for k, r in (("tuned", tuned), ("fresh", fresh))}
    assert f1["tuned"] > 0.9 > f1["fresh"]


def test_init_weights_must_match_the_architecture(tmp_path):
    im = _synthetic_image(64)
    src = train(TrainConfig(iterations=1, **{**TINY, "crop": 32}), [im], tmp_path / "a", tune=False)
    wider = {**TINY, "crop": 32, "arch_kwargs": {"width": 4, "depth": 2}}
    with pytest.raises(ValueError, match="init_weights .* is a unet"):
        train(TrainConfig(iterations=1, init_weights=str(src.model_path), **wider), [im], tmp_path / "b", tune=False)
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(iterations=1, init_weights=str(tmp_path / "none.safetensors"), **TINY), [im], tmp_path / "c")


def test_image_digest_depends_on_pixels_and_shape_only():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    assert image_digest(a) == image_digest(a.copy()) and len(image_digest(a)) == 16
    b = a.copy()
    b[3, 2, 1] ^= 1
    assert image_digest(b) != image_digest(a)
    assert image_digest(a.reshape(6, 8, 3)) != image_digest(a)
    assert image_digest(np.asfortranarray(a)) == image_digest(a)


def test_recipe_saved_before_the_hed_and_jpeg_fields_loads_as_it_trained():
    from importlib.resources import files

    doc = json.loads((files("nucseg") / "models" / "weights" / "default.json").read_text())
    cfg = TrainConfig.from_dict(doc["training"]["recipe"])
    assert cfg.augment.stain == 0.15 and cfg.augment.hed_scale == (0, 0, 0) and cfg.augment.jpeg_p == 0
    assert cfg.to_dict()["augment"]["hed_scale"] == [0.0, 0.0, 0.0]  # JSON-ready, read back equal
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_checkpoint_without_the_new_augment_fields_resumes_only_under_its_own_augmentation(tmp_path):
    im = _synthetic_image(64)
    legacy = AugmentConfig(rotate=False, elastic_alpha=0, scale=(1, 1), stain=0.15, hed_scale=(0, 0, 0),
                           hed_shift=(0, 0, 0), jpeg_p=0)
    cfg = TrainConfig(iterations=4, checkpoint_every=2, **{**TINY, "crop": 32, "augment": legacy})
    train(cfg, [im], tmp_path, tune=False, stop_after=2)
    meta = tmp_path / "checkpoint.json"
    doc = json.loads(meta.read_text())
    for key in ("hed_scale", "hed_shift", "jpeg_p", "jpeg_quality"):  # as a checkpoint written before issue 17
        del doc["config"]["augment"][key]
    meta.write_text(json.dumps(doc))
    new_defaults = TrainConfig(iterations=4, checkpoint_every=2,
                               **{**TINY, "crop": 32, "augment": AugmentConfig(rotate=False, elastic_alpha=0, scale=(1, 1))})
    with pytest.raises(ValueError, match=r"different recipe \(differing: augment\.hed_scale, augment\.hed_shift, "
                                         r"augment\.jpeg_p, augment\.stain\)"):
        train(new_defaults, [im], tmp_path, tune=False)
    assert train(cfg, [im], tmp_path, tune=False).iterations == 4


def test_bfloat16_training_autocasts_the_passes_and_keeps_float32_weights(tmp_path):
    # The forward pass really runs in bfloat16 (a hook sees the convolutions' outputs), the
    # weights and the saved model stay float32, and it still learns the synthetic image.
    from nucseg.train import build_model as real_build

    seen: set[torch.dtype] = set()

    def build(*a, **k):
        net = real_build(*a, **k)
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                # training steps only (the model's halo is probed in float32 after training)
                mod.register_forward_hook(lambda m, _i, out: seen.add(out.dtype) if m.training else None)
        return net

    im = _synthetic_image()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nucseg.train.build_model", build)
        res = train(TrainConfig(iterations=60, checkpoint_every=1000, precision="bfloat16", **TINY), [im], tmp_path,
                    tune=False)
    assert seen == {torch.bfloat16}
    model = load_model(res.model_path, device="cpu", precision="float32")
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    assert json.loads(res.model_path.with_suffix(".json").read_text())["training"]["recipe"]["precision"] == "bfloat16"
    assert pixel_scores(model.predict(im.rgb) > 0.25, im.mask).f1 > 0.9 and res.final_loss < 1.0


def test_precision_is_part_of_the_recipe(tmp_path):
    im = _synthetic_image(64)
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16', got 'float16'"):
        train(TrainConfig(iterations=1, precision="float16", **{**TINY, "crop": 32}), [im], tmp_path / "a")
    train(TrainConfig(iterations=1, **{**TINY, "crop": 32}), [im], tmp_path / "b", tune=False)
    with pytest.raises(ValueError, match="differing: precision"):
        train(TrainConfig(iterations=1, precision="bfloat16", **{**TINY, "crop": 32}), [im], tmp_path / "b", tune=False)
    assert TrainConfig.from_dict({k: v for k, v in TrainConfig().to_dict().items() if k != "precision"}).precision == "float32"


def test_prepare_images_shares_the_targets_of_repeated_entries():
    # A balanced multi-source draw list repeats a small source's images hundreds of times: each
    # distinct image is prepared once (the repeats once took 18 GB for a 2,632-entry list).
    from nucseg.data import instance_distance, loss_weights
    from nucseg.train import prepare_images

    a, b = _synthetic_image(seed=1), _synthetic_image(seed=2)
    out = prepare_images([a, b, a, a, b], w0=10.0, sigma=5.0)
    assert len(out) == 5
    assert out[0] is out[2] is out[3] and out[1] is out[4] and out[0] is not out[1]
    np.testing.assert_array_equal(out[1].weights, loss_weights(b.labels, w0=10.0, sigma=5.0))
    np.testing.assert_array_equal(out[0].distance, instance_distance(a.labels))
    # Equal content but distinct objects are not merged (identity, not equality).
    c = _synthetic_image(seed=1)
    assert prepare_images([a, c])[0] is not prepare_images([a, c])[1]
