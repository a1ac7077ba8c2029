"""Model files, predict, tiled segment, mpp rescaling and the bundled default model."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nucseg  # noqa: E402
from nucseg.inference import (  # noqa: E402
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    ModelConfig,
    NucleusModel,
    combine_outputs,
    dihedral_mean,
    load_model,
    pad_to_multiple,
    receptive_halo,
    save_model,
    segment,
)
from nucseg.models import PangNet, UNet  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tiny(tmp_path, out_channels=2, seed=0):
    torch.manual_seed(seed)
    net = UNet(3, out_channels, width=4, depth=2).eval()
    # Non-trivial batch-norm statistics so eval mode is not the identity.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    cfg = ModelConfig("tiny", "unet", 3, out_channels, 4, halo=receptive_halo(net, 4), arch_kwargs={"width": 4, "depth": 2})
    path = save_model(net, cfg, tmp_path / "tiny.safetensors")
    return path, net, cfg


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_config_round_trip():
    cfg = ModelConfig("m", "unet", 3, 2, 8, lam=0.1, arch_kwargs={"width": 16})
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_save_and_load_round_trip(tmp_path):
    path, net, cfg = _tiny(tmp_path)
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["config"] == cfg.to_dict() and len(doc["sha256"]) == 64
    model = load_model(path, device="cpu")
    assert isinstance(model, NucleusModel) and model.config == cfg and model.sha256 == doc["sha256"]
    assert not model.net.training
    for (k, a), b in zip(net.state_dict().items(), model.net.state_dict().values()):
        assert torch.equal(a, b), k
    assert load_model(path.with_suffix(".json"), device="cpu").sha256 == model.sha256


def test_predict_shapes_and_range(tmp_path):
    model = load_model(_tiny(tmp_path)[0], device="cpu")
    for h, w in [(13, 17), (32, 32), (45, 70)]:
        m = model.predict(_rgb(h, w))
        assert m.shape == (h, w) and m.dtype == np.float32
        assert 0 <= m.min() and m.max() <= 1
    batch = np.stack([_rgb(21, 30, s) for s in range(3)])
    mb = model.predict(batch, batch_size=2)
    assert mb.shape == (3, 21, 30)
    np.testing.assert_allclose(mb[1], model.predict(batch[1]), atol=1e-5)


def test_predict_matches_the_network(tmp_path):
    path, net, cfg = _tiny(tmp_path)
    model = load_model(path, device="cpu")
    rgb = _rgb(32, 48)
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(
        cfg.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net(x)
    p, d = torch.sigmoid(logits[0, 0]), torch.sigmoid(logits[0, 1])
    np.testing.assert_allclose(model.predict(rgb), (p * (0.5 + 0.5 * d)).numpy(), atol=1e-5)


@pytest.mark.parametrize(("h", "w"), [(61, 75), (32, 48), (3, 2), (1, 40)])
def test_pad_to_multiple_matches_torch_padding(h, w):
    """The one padding both engines see: torch's reflect pad (replicate when the image is
    too small to mirror), computed independently with torch.nn.functional.pad."""
    batch = np.random.default_rng(h * w).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    got = pad_to_multiple(batch, 16)
    assert got.shape == (2, -(-h // 16) * 16, -(-w // 16) * 16, 3) and got.dtype == np.uint8
    ph, pw = got.shape[1] - h, got.shape[2] - w
    mode = "reflect" if ph < h and pw < w else "replicate"
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    want = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    if not (ph or pw):
        assert got is batch  # nothing to pad: no copy


def test_dihedral_mean_against_brute_force():
    """TTA on a run that is not equivariant (it weights a ramp): the mean of the eight
    views, each mapped back, written out by hand; and then exactly equivariant."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    ramp = np.arange(64, dtype=np.float32).reshape(8, 8)

    def run(b):
        return b[..., 0].astype(np.float32) * ramp + b[..., 1]

    views = []
    for flip in (False, True):
        for k in range(4):
            v = np.stack([np.rot90(img[:, ::-1] if flip else img, k) for img in x])
            m = np.stack([np.rot90(mi, -k) for mi in run(v)])
            views.append(m[:, :, ::-1] if flip else m)
    got = dihedral_mean(run, x)
    np.testing.assert_allclose(got, np.mean(views, axis=0), rtol=1e-6)
    assert not np.allclose(got, run(x))
    np.testing.assert_allclose(dihedral_mean(run, np.rot90(x, 1, axes=(1, 2)).copy()), np.rot90(got, 1, axes=(1, 2)), rtol=1e-6)


def test_tta_is_the_mean_over_the_eight_views_and_equivariant(tmp_path):
    model = load_model(_tiny(tmp_path)[0], device="cpu")
    rgb = _rgb(32, 48, seed=3)  # multiples of the stride: no padding, so every view is exact
    views = []
    for flip in (False, True):
        for k in range(4):
            v = np.rot90(rgb[:, ::-1] if flip else rgb, k)
            m = np.rot90(model.predict(np.ascontiguousarray(v)), -k)
            views.append(m[:, ::-1] if flip else m)
    tta = model.predict(rgb, tta=True)
    np.testing.assert_allclose(tta, np.mean(views, axis=0), atol=1e-5)
    assert not np.allclose(tta, model.predict(rgb), atol=1e-3)  # the views do differ
    for k in (1, 2, 3):  # a rotated input gives the rotated map
        np.testing.assert_allclose(model.predict(np.ascontiguousarray(np.rot90(rgb, k)), tta=True), np.rot90(tta, k), atol=1e-5)
    np.testing.assert_allclose(model.predict(np.ascontiguousarray(rgb[::-1]), tta=True), tta[::-1], atol=1e-5)
    labels = segment(rgb, model, tta=True, tile=16)
    assert labels.shape == rgb.shape[:2]


def test_combine_outputs():
    logits = torch.tensor([[[[0.0]], [[0.0]]]])  # p = 0.5, d = 0.5
    assert float(combine_outputs(logits)) == pytest.approx(0.375)
    assert float(combine_outputs(logits[:, :1])) == pytest.approx(0.5)


def test_bad_inputs(tmp_path):
    model = load_model(_tiny(tmp_path)[0], device="cpu")
    with pytest.raises(TypeError, match="uint8"):
        model.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        model.predict(np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        segment([[1, 2, 3]], model)
    with pytest.raises(ValueError, match="2-D"):
        model.postprocess(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="mpp"):
        segment(_rgb(8, 8), model, mpp=-1)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match=".safetensors or .json"):
        load_model(tmp_path / "weights.pt")


def test_tampered_weights_are_rejected(tmp_path):
    path = _tiny(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_model(path, device="cpu")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = _tiny(tmp_path)[0]

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_model(path, device="cpu")
    # A pickle renamed to .safetensors is refused by the safetensors reader.
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg.pop("sha256")
    evil.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(Exception) as info:
        load_model(evil, device="cpu")
    assert not isinstance(info.value, AssertionError)


def test_receptive_halo_of_pangnet():
    # Four 5x5 convolutions: radius 4 * 2 = 8.
    assert receptive_halo(PangNet(), 1) == 8
    assert receptive_halo(UNet(3, 1, width=4, depth=2), 4) % 4 == 0


def test_tiling_is_seamless_on_the_map(tmp_path):
    model = load_model(_tiny(tmp_path)[0], device="cpu")
    rgb = _rgb(75, 101)  # not a multiple of the stride, larger than the tiles
    _, one = segment(rgb, model, tile=512, return_map=True, threshold=0.3, lam=0.01)
    for tile in (16, 24, 40):
        _, tiled = segment(rgb, model, tile=tile, return_map=True, threshold=0.3, lam=0.01)
        np.testing.assert_allclose(tiled, one, atol=1e-5)


def test_mpp_rescaling_returns_input_shape(tmp_path):
    model = load_model(_tiny(tmp_path)[0], device="cpu")
    rgb = _rgb(40, 52)
    for mpp in (0.125, 0.5):
        labels, prob = segment(rgb, model, mpp=mpp, return_map=True)
        assert labels.shape == (40, 52) and labels.dtype == np.int32
        assert prob.shape == (round(40 * mpp / 0.25), round(52 * mpp / 0.25))


# ------------------------------------------------------------------ bundled default model


def test_bundled_model_loads_and_is_verified():
    model = nucseg.load_model(device="cpu")
    doc = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert model.sha256 == doc["sha256"]
    assert DEFAULT_MODEL.stat().st_size < 20e6
    assert model.config.halo % model.config.stride == 0
    assert 0 < model.config.threshold < 1 and model.config.lam >= 0


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_bundled_models_load_by_name_with_their_licence(name):
    path = BUNDLED_MODELS[name]
    doc = json.loads(path.with_suffix(".json").read_text())
    model = load_model(name, device="cpu")
    assert model.sha256 == doc["sha256"] and model.config.name == name
    assert path.stat().st_size < 20e6
    # Each weight set states the terms it inherits from its training data (docs/DATA.md).
    assert doc["licence"]["spdx"] in ("CC-BY-4.0", "CC-BY-NC-SA-4.0") and doc["licence"]["data"]
    assert (load_model(None, device="cpu").sha256 == model.sha256) == (name == "default")


@pytest.mark.parametrize("name", ["multiorgan", "default+multiorgan"])
def test_multiorgan_models_never_saw_the_monuseg_test_patients(name):
    from nucseg.datasets import is_monuseg_test
    from nucseg.generalization import trained_on

    path = BUNDLED_MODELS[name]
    training = json.loads(path.with_suffix(".json").read_text())["training"]
    sources = trained_on(path)
    assert sources is not None and "monuseg2018_test" not in sources
    # Only sources whose licences allow publishing weights (docs/DATA.md): no CPM-15, GBM40, CoNSeP.
    assert set(sources) <= {"tnbc", "monuseg2018_train", "dsb2018_he"}, sources
    images = training["patients"]
    assert len(images) >= 30 and not any(is_monuseg_test(i) for i in images)
    # The licence credits every training source.
    credited = json.loads(path.with_suffix(".json").read_text())["licence"]["data"]
    assert all(any(c.startswith(f"{s}: ") for c in credited) for s in sources)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"bundled model name \('default', 'multiorgan', 'default\+multiorgan'\).*'multiorgn'"):
        load_model("multiorgn", device="cpu")


def test_bundled_model_tampered_copy_is_rejected(tmp_path):
    dst = tmp_path / "default.safetensors"
    shutil.copy(DEFAULT_MODEL, dst)
    shutil.copy(DEFAULT_MODEL.with_suffix(".json"), dst.with_suffix(".json"))
    load_model(dst, device="cpu")
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0x01
    dst.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_model(dst, device="cpu")


def test_segment_tiled_equals_one_piece_on_real_tissue(tnbc_dir):
    from nucseg.data import read_rgb

    rgb = read_rgb(tnbc_dir / "Slide_04" / "04_1.png")[:300, :437]
    model = nucseg.load_model(device="cpu")
    one = nucseg.segment(rgb, model, tile=1024)
    tiled = nucseg.segment(rgb, model, tile=120)
    assert one.max() > 10  # the trained model finds nuclei
    np.testing.assert_array_equal(tiled, one)


def test_bundled_model_segments_real_nuclei(tnbc_dir):
    from nucseg.data import load_tnbc
    from nucseg.metrics import pixel_scores

    im = load_tnbc(tnbc_dir, ["02"])[0]
    labels = nucseg.segment(im.rgb, device="cpu")
    # Patient 02 was in the training set: this checks the shipped weights, not generalisation.
    assert pixel_scores(labels > 0, im.mask).f1 > 0.7


def test_segment_images_smaller_than_the_halo(tmp_path):
    model = load_model(_tiny(tmp_path)[0], device="cpu")
    for h, w in [(1, 1), (5, 9), (3, 40)]:
        labels = segment(_rgb(h, w), model, tile=16)
        assert labels.shape == (h, w) and labels.dtype == np.int32


# ------------------------------------------------------------------ CUDA (skipped without a GPU)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_predict_matches_cpu(tmp_path):
    path = _tiny(tmp_path)[0]
    rgb = _rgb(100, 130)
    cpu = load_model(path, device="cpu").predict(rgb)
    gpu_model = load_model(path, device="cuda")
    gpu = gpu_model.predict(rgb)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    assert np.abs(cpu - gpu).max() < 2e-2  # float16 autocast on the GPU
    np.testing.assert_allclose(gpu_model.predict(rgb, tta=True), load_model(path, device="cpu").predict(rgb, tta=True), atol=2e-2)


@needs_cuda
def test_cuda_segment_matches_cpu_on_real_tissue(tnbc_dir):
    from nucseg.data import load_tnbc
    from nucseg.metrics import object_scores

    im = load_tnbc(tnbc_dir, ["04"])[0]
    cpu = nucseg.segment(im.rgb, device="cpu")
    gpu = nucseg.segment(im.rgb, device="cuda")
    # float16 moves a few pixels at threshold/saddle ties; the objects stay the same.
    assert abs(int(gpu.max()) - int(cpu.max())) <= max(2, cpu.max() // 50)
    assert object_scores(cpu, gpu).f1 > 0.97


# ------------------------------------------------------------------ precision


def test_bfloat16_predict_is_close_to_float32(tmp_path):
    path = _tiny(tmp_path)[0]
    rgb = _rgb(96, 120)
    f32 = load_model(path, device="cpu", precision="float32").predict(rgb)
    auto = load_model(path, device="cpu").predict(rgb)
    bf16_model = load_model(path, device="cpu", precision="bfloat16")
    bf16 = bf16_model.predict(rgb)
    np.testing.assert_array_equal(auto, f32)  # auto is float32 on the CPU
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - f32).max() < 0.05  # bfloat16 did run, and stays close
    assert bf16_model.precision == "bfloat16"


def test_bfloat16_segment_keeps_the_objects(tnbc_dir):
    from nucseg.data import load_tnbc
    from nucseg.metrics import object_scores

    im = load_tnbc(tnbc_dir, ["04"])[0]
    f32 = nucseg.segment(im.rgb, device="cpu")
    bf16 = nucseg.segment(im.rgb, device="cpu", precision="bfloat16")
    assert object_scores(f32, bf16).f1 > 0.97


def test_bad_precision_is_refused(tmp_path):
    path = _tiny(tmp_path)[0]
    for bad in ("bf16", "half", None):
        with pytest.raises(ValueError, match="precision must be one of"):
            load_model(path, device="cpu", precision=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        nucseg.segment(_rgb(16, 16), path, device="cpu", precision="fp8")


def test_bundled_ensemble_is_the_mean_of_the_two_bundled_models():
    """``default+multiorgan`` holds exactly the two bundled networks (same weights, their
    checksums recorded) and gives, per channel, the mean of their sigmoids."""
    import torch

    from nucseg.inference import combine_outputs

    ens = load_model("default+multiorgan", device="cpu")
    members = [load_model(name, device="cpu") for name in ("default", "multiorgan")]
    doc = json.loads(BUNDLED_MODELS["default+multiorgan"].with_suffix(".json").read_text())
    assert [m["sha256"] for m in doc["training"]["ensemble_of"]] == [m.sha256 for m in members]
    assert set(doc["training"]["sources"]) == {"tnbc", "monuseg2018_train"}
    for net, member in zip(ens.net.members, members):
        theirs = member.net.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [torch.sigmoid(m.net(x).float()) for m in members]
        p = (outs[0][:, 0] + outs[1][:, 0]) / 2
        d = (outs[0][:, 1] + outs[1][:, 1]) / 2
        got = combine_outputs(ens.net(x))
    np.testing.assert_allclose(got.numpy(), (p * (0.5 + 0.5 * d)).numpy(), atol=1e-5)
