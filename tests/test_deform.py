"""The pure-PyTorch deformable 3x3 conv against independent oracles (plain conv, shifted conv, hand bilinear)."""
import pytest
import torch
import torch.nn.functional as F

from vitsplit_vlm.vision import ViTSplit, ViTSplitConfig, load_tower
from vitsplit_vlm.vision.deform import DeformConv3x3, _torchvision_deform_conv2d, deform_conv2d_reference


def _offsets(batch, h, w, dy, dx):
    """Every tap shifted by the same (dy, dx)."""
    off = torch.zeros(batch, 18, h, w, dtype=torch.float64)
    off[:, 0::2], off[:, 1::2] = dy, dx
    return off


def test_zero_offsets_equal_the_plain_conv():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 5, 7, 9, dtype=torch.float64), torch.randn(4, 5, 3, 3, dtype=torch.float64)
    out = deform_conv2d_reference(x, torch.zeros(2, 18, 7, 9, dtype=torch.float64), weight)
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=1), atol=1e-6, rtol=0)


def test_module_starts_as_the_plain_conv_and_its_offsets_learn():
    torch.manual_seed(0)
    layer = DeformConv3x3(6, 4)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, padding=1), atol=1e-6, rtol=0)
    layer(x).square().sum().backward()
    assert layer.offset.weight.grad.abs().sum() > 0 and layer.offset.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (-1, 1)])
def test_integer_offset_equals_the_plain_conv_of_a_shifted_image(dy, dx):
    torch.manual_seed(0)
    x, weight = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    # Sampling every tap at (+dy, +dx) is the plain conv's output (dy, dx) pixels further on, computed on the
    # image zero-padded wide enough that the shift never leaves it.
    h, w, pad = *x.shape[-2:], 3
    full = F.conv2d(F.pad(x, (pad, pad, pad, pad)), weight, padding=1)
    out = deform_conv2d_reference(x, _offsets(1, h, w, dy, dx), weight)
    torch.testing.assert_close(out, full[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w], atol=1e-10, rtol=0)


def test_fractional_offsets_interpolate_bilinearly_with_zeros_outside():
    x = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 1, 4, 4)
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0  # centre tap only: the output is the sample itself
    offset = torch.zeros(1, 18, 4, 4, dtype=torch.float64)
    offset[0, 8], offset[0, 9] = 0.25, 0.5  # centre tap: row + 0.25, column + 0.5
    out = deform_conv2d_reference(x, offset, weight)[0, 0]

    def pixel(r, c):
        return float(x[0, 0, r, c]) if 0 <= r < 4 and 0 <= c < 4 else 0.0

    def by_hand(r, c):  # sample at (r + 0.25, c + 0.5) from the four neighbours
        return (0.75 * 0.5 * pixel(r, c) + 0.75 * 0.5 * pixel(r, c + 1)
                + 0.25 * 0.5 * pixel(r + 1, c) + 0.25 * 0.5 * pixel(r + 1, c + 1))

    expected = torch.tensor([[by_hand(r, c) for c in range(4)] for r in range(4)], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    assert float(out[3, 3]) == pytest.approx(0.75 * 0.5 * 16)  # three neighbours lie outside: they count as zero


@pytest.mark.skipif(_torchvision_deform_conv2d() is None, reason="torchvision does not import beside this torch")
def test_matches_torchvision_deform_conv2d():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 4, 6, 7, dtype=torch.float64), torch.randn(3, 4, 3, 3, dtype=torch.float64)
    offset = 2 * torch.randn(2, 18, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(
        deform_conv2d_reference(x, offset, weight), _torchvision_deform_conv2d()(x, offset, weight, padding=(1, 1))
    )


def test_deformable_split_starts_equal_to_the_plain_one(tiny_ckpts):
    torch.manual_seed(0)
    plain = ViTSplit(load_tower(tiny_ckpts["dinov2"]), ViTSplitConfig(task_layers=2, prior_layers=[1, 3]))
    deform = ViTSplit(
        load_tower(tiny_ckpts["dinov2"]), ViTSplitConfig(task_layers=2, prior_layers=[1, 3], deformable=True)
    )
    with torch.no_grad():
        for name in ("prior_head", "fusion"):
            getattr(deform, name)[0].load_state_dict(getattr(plain, name)[0].state_dict())
            getattr(deform, name)[2].weight.copy_(getattr(plain, name)[2].weight)
            getattr(plain, name)[2].bias.zero_()  # the paper's deformable conv has no bias
    pixels = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(deform(pixels).feature_map, plain(pixels).feature_map, atol=1e-6, rtol=0)


def test_loading_the_other_variant_is_a_clear_error(tiny_ckpts):
    cfg = dict(task_layers=2, prior_layers=[1, 3])
    plain = ViTSplit(load_tower(tiny_ckpts["dinov2"]), ViTSplitConfig(**cfg))
    deform = ViTSplit(load_tower(tiny_ckpts["dinov2"]), ViTSplitConfig(**cfg, deformable=True))
    with pytest.raises(ValueError, match=r"^These weights hold the plain 3x3 prior/fusion conv but the split config "
                                         r"asks for the deformable one; set the split option deformable=false"):
        deform.load_state_dict(plain.state_dict(), strict=False)
    with pytest.raises(ValueError, match=r"hold the deformable 3x3 .* set the split option deformable=true"):
        plain.load_state_dict(deform.state_dict())
