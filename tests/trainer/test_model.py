"""AlexNet (trainer/model.py): shapes, parameter counts, the paper's initialisation and LRN."""

import pytest
import torch

from trainer.model import ARCHS, LocalResponseNorm, build_model, count_parameters


def conv(cin, cout, k, groups=1):
    return cout * (cin // groups) * k * k + cout


def fc(cin, cout):
    return cin * cout + cout


def expected_params(num_classes, groups):
    return (
        conv(3, 96, 11)
        + conv(96, 256, 5, groups)
        + conv(256, 384, 3)
        + conv(384, 384, 3, groups)
        + conv(384, 256, 3, groups)
        + fc(9216, 4096)
        + fc(4096, 4096)
        + fc(4096, num_classes)
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {arch: build_model(1000, arch) for arch in ARCHS}


def test_parameter_counts_match_the_layer_table(models):
    assert count_parameters(models["alexnet"]) == expected_params(1000, 1) == 62_378_344
    # the paper's two-GPU model: "60 million parameters"
    assert count_parameters(models["alexnet-2012"]) == expected_params(1000, 2) == 60_965_224


@pytest.mark.parametrize("arch", ARCHS)
def test_output_and_feature_shapes(models, arch):
    model = models[arch].eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        assert model.features[0](x).shape == (2, 96, 55, 55)  # Sec. 3.5: 227 -> 55x55 after conv1
        assert model.features(x).shape == (2, 256, 6, 6)
        assert model(x).shape == (2, 1000)


def test_paper_initialisation(models):
    convs_fcs = models["alexnet"].layers()
    assert len(convs_fcs) == 8
    bias_one = {1, 3, 4, 5, 6}  # conv2, conv4, conv5, fc6, fc7
    for i, layer in enumerate(convs_fcs):
        w = layer.weight.detach()
        assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.01, rel=0.05)
        assert torch.all(layer.bias == (1.0 if i in bias_one else 0.0))


def test_dropout_before_the_two_hidden_fc_layers(models):
    kinds = [type(m).__name__ for m in models["alexnet"].classifier]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert all(m.p == 0.5 for m in models["alexnet"].classifier if isinstance(m, torch.nn.Dropout))


def paper_lrn(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Sec. 3.3 written out: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    out = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo : hi + 1] ** 2).sum(dim=1)) ** beta
    return out


def test_lrn_is_the_papers_formula():
    a = torch.rand(2, 12, 3, 3, dtype=torch.float64) * 100  # large activations so the sum matters
    torch.testing.assert_close(LocalResponseNorm()(a), paper_lrn(a))
    # two towers: each half is normalised on its own (no neighbours across the GPU boundary)
    halves = torch.cat([paper_lrn(a[:, :6]), paper_lrn(a[:, 6:])], dim=1)
    torch.testing.assert_close(LocalResponseNorm(groups=2)(a), halves)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_lrn_matches_torch_forward_and_backward(groups, channels_last):
    """At conv1's shape (96 x 55 x 55) in fp32, against nn.LocalResponseNorm (alpha * n: torch divides by n)."""
    torch.manual_seed(0)
    a = (torch.randn(4, 96, 55, 55) * 30).relu()  # post-ReLU activations, large enough for the sum to matter
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(a.shape)
    torch_lrn = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    x, ref = a.clone().requires_grad_(), a.clone().requires_grad_()
    out = LocalResponseNorm(groups)(x)
    expected = torch.cat([torch_lrn(part) for part in ref.chunk(groups, dim=1)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.dtype == a.dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-6)
    assert (out - a).abs().max() > 1  # the normalisation really changed the activations


def test_fused_lrn_in_bfloat16_stays_bfloat16():
    a = (torch.randn(2, 96, 13, 13) * 30).relu()
    out = LocalResponseNorm()(a.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), LocalResponseNorm()(a), rtol=2e-2, atol=1e-2)


def test_two_tower_convs_are_grouped(models):
    groups = [m.groups for m in models["alexnet-2012"].features if isinstance(m, torch.nn.Conv2d)]
    assert groups == [1, 2, 1, 2, 2]  # Fig. 2: conv3 (and the FCs) connect across the GPUs


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="arch"):
        build_model(10, "vgg")


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_built_from_weights_takes_them_and_draws_nothing(models, arch):
    """Evaluating and resuming build the model from the checkpoint's tensors: the same network, trainable, and the
    RNG untouched (a resumed run restores its own RNG state; a drawn model moves it)."""
    weights = models[arch].state_dict()
    before = torch.get_rng_state()
    model = build_model(1000, arch, weights=weights)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.state_dict().keys() == weights.keys()
    assert all(p.device.type == "cpu" and p.requires_grad for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    x = torch.randn(2, 3, 227, 227)
    models[arch].eval(), model.eval()
    assert torch.equal(model(x), models[arch](x))
    build_model(8, arch)
    assert not torch.equal(torch.get_rng_state(), before)  # the check above can fail
