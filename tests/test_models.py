"""Networks: shapes for several input sizes, gradients, parameter counts, VGG weight loading."""

from __future__ import annotations

import pickle

import pytest

torch = pytest.importorskip("torch")

from nucseg.models import (  # noqa: E402
    ARCHITECTURES,
    Ensemble,
    FCN8s,
    PangNet,
    UNet,
    build_model,
    count_parameters,
    load_vgg16_encoder,
)
from nucseg.models.fcn import bilinear_kernel  # noqa: E402
from nucseg.models.vgg import vgg16_stages  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# Small variants of every architecture (thin VGGs) so the tests stay fast.
SMALL = {
    "pangnet": {},
    "unet": {"width": 4, "depth": 2},
    "fcn8s": {"width_div": 16, "fc_channels": 16},
    "deconvnet": {"width_div": 16, "fc_channels": 16},
}


def test_every_architecture_has_a_small_variant():
    assert set(SMALL) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("out_channels", [1, 2])
def test_output_shape_at_input_resolution(arch, out_channels):
    net = build_model(arch, 3, out_channels, **SMALL[arch]).eval()
    s = net.stride
    for h, w in [(s, s), (2 * s, 3 * s), (max(64, s), max(96, 3 * s))]:
        with torch.no_grad():
            y = net(torch.zeros(2, 3, h, w))
        assert y.shape == (2, out_channels, h, w)


def test_strides():
    assert PangNet().stride == 1
    assert UNet(width=4, depth=3).stride == 8
    assert build_model("fcn8s", **SMALL["fcn8s"]).stride == 32
    assert build_model("deconvnet", **SMALL["deconvnet"]).stride == 32


def test_pangnet_accepts_any_size():
    with torch.no_grad():
        assert PangNet()(torch.zeros(1, 3, 17, 23)).shape == (1, 1, 17, 23)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_gradients_reach_every_parameter(arch):
    torch.manual_seed(0)
    net = build_model(arch, 3, 1, **SMALL[arch]).train()
    x = torch.randn(2, 3, 64, 64)
    net(x).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_parameter_counts_match_the_published_architectures():
    # Built on the meta device: no memory, instant, exact counts.
    with torch.device("meta"):
        vgg = vgg16_stages()
        fcn = FCN8s(3, 2)
        unet = UNet(3, 2, width=64, depth=4)
        pang = PangNet(3, 2)
    # torchvision's vgg16().features has 14,714,688 parameters.
    assert count_parameters(vgg) == 14_714_688
    fc = 512 * 4096 * 49 + 4096 + 4096 * 4096 + 4096
    scorers = (4096 + 512 + 256) * 2 + 3 * 2
    ups = 2 * 2 * 4 * 4 * 2 + 2 * 2 * 16 * 16
    assert count_parameters(fcn) == 14_714_688 + fc + scorers + ups
    # The original U-Net has about 31 M parameters.
    assert 30e6 < count_parameters(unet) < 32e6
    # PangNet: 4 conv layers of 8 maps, 5x5.
    assert count_parameters(pang) == (3 * 8 * 25 + 8) + 3 * (8 * 8 * 25 + 8) + (8 * 2 + 2)


def test_default_model_architecture_is_small():
    n = count_parameters(UNet(3, 2, width=16, depth=3))
    assert 300_000 < n < 1_000_000  # ~1.9 MB of float32 weights


def test_bilinear_kernel_upsamples_a_constant_to_a_constant():
    up = torch.nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(1, 4))
        y = up(torch.ones(1, 1, 8, 8))
    assert torch.allclose(y[0, 0, 1:-1, 1:-1], torch.ones(14, 14))


def test_ensemble_averages_probabilities():
    torch.manual_seed(0)
    a, b = PangNet(3, 1), UNet(3, 1, width=4, depth=2)
    ens = Ensemble([a, b]).eval()
    assert ens.stride == 4
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = (torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2
        assert torch.allclose(torch.sigmoid(ens(x)), expected, atol=1e-5)
    built = build_model("ensemble", members=[{"arch": "pangnet"}, {"arch": "unet", "arch_kwargs": {"width": 4, "depth": 2}}])
    assert isinstance(built, Ensemble) and len(built.members) == 2


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg")
    with pytest.raises(ValueError, match="members"):
        build_model("ensemble")


def _fake_torchvision_vgg16(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision vgg16's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    idx = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    state = {}
    for k, i in enumerate(idx):
        state[f"features.{i}.weight"] = torch.randn(chans[k + 1], chans[k], 3, 3, generator=g)
        state[f"features.{i}.bias"] = torch.randn(chans[k + 1], generator=g)
    state["classifier.0.weight"] = torch.zeros(1)  # ignored
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg_encoder_weights_load_from_a_local_file(tmp_path, suffix):
    state = _fake_torchvision_vgg16()
    path = tmp_path / f"vgg16{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    stages = vgg16_stages()
    assert load_vgg16_encoder(stages, path) == 13
    convs = [m for m in stages.modules() if isinstance(m, torch.nn.Conv2d)]
    assert torch.equal(convs[0].weight, state["features.0.weight"])
    assert torch.equal(convs[-1].bias, state["features.28.bias"])


class _Evil:
    def __reduce__(self):
        return (pytest.fail, ("unpickled an arbitrary object",))


def test_vgg_encoder_loading_never_runs_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        load_vgg16_encoder(vgg16_stages(), path)


def test_vgg_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder weights"):
        load_vgg16_encoder(vgg16_stages(), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="features.0"):
        load_vgg16_encoder(vgg16_stages(), bad)
    wrong = _fake_torchvision_vgg16()
    wrong["features.0.weight"] = torch.zeros(64, 4, 3, 3)
    torch.save(wrong, bad)
    with pytest.raises(ValueError, match="shape"):
        load_vgg16_encoder(vgg16_stages(), bad)
    with pytest.raises(ValueError, match="13-conv"):
        load_vgg16_encoder(vgg16_stages(width_div=2)[:2], bad)

