"""Tests of monai_unet2.networks: exact parameter parity, the shipped weights, layer options and depth, shapes
(2D / 3D / odd), output forms, checkpointing, export, and a short overfit on a real hippocampus MR slice."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn
from torch.export import Dim, export

from monai_unet2.networks import U2Net, UNet
from monai_unet2.networks.u2net_parts import CeilMaxPool
from monai_unet2.networks.unet_parts import DoubleConv, pad_to_match

HIPPOCAMPUS_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLE_DATA = HIPPOCAMPUS_BUNDLE / "sample_data"


pytestmark = pytest.mark.usefixtures("single_thread")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "net, expected",
    [
        (lambda: UNet(spatial_dims=2, in_channels=3, out_channels=2, features=64), 31_037_698),
        (lambda: UNet(spatial_dims=2, in_channels=3, out_channels=2, features=64, bilinear=True), 17_263_042),
        (lambda: U2Net(spatial_dims=2, in_channels=3, out_channels=1, variant="full"), 44_009_869),
        (lambda: U2Net(spatial_dims=2, in_channels=3, out_channels=1, variant="small"), 1_131_181),
    ],
    ids=["unet_transposed", "unet_bilinear", "u2net_full", "u2net_small"],
)
def test_parameter_counts_match_reference(net, expected):
    assert count_parameters(net()) == expected


def test_shipped_hippocampus_weights_load_strictly_and_give_the_same_logits():
    """models/model.pt of the hippocampus bundle on a committed case (2.5D stacks, k = 2). With the 0.1.0 weights the
    numbers were those of the four-level UNet before act / norm / dropout / depth became arguments; they are now
    pinned for the 0.2.0 weights, stored in float16 and loaded into the float32 network."""
    net = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32).eval()
    net.load_state_dict(torch.load(HIPPOCAMPUS_BUNDLE / "models" / "model.pt", weights_only=True), strict=True)
    image = np.asarray(nib.load(SAMPLE_DATA / "imagesTr" / "hippocampus_004.nii.gz").dataobj, dtype=np.float32)
    image = (image - image.mean()) / image.std()
    stacks = np.stack([image[..., k - 2 : k + 3].transpose(2, 0, 1) for k in range(2, image.shape[-1] - 2)])
    with torch.no_grad():
        logits = net(torch.from_numpy(stacks))
    assert logits.shape == (34, 3, 36, 52)
    assert float(logits.abs().sum()) == pytest.approx(1213425.4, rel=1e-5)
    torch.testing.assert_close(logits[17, :, 18, 26], torch.tensor([5.503705, -5.273047, -5.646331]))
    counts = torch.bincount(logits.argmax(dim=1).flatten(), minlength=3).tolist()
    assert all(abs(count - expected) <= 2 for count, expected in zip(counts, [60347, 1752, 1549])), counts


def test_act_norm_dropout_options_keep_parameter_names():
    default = UNet(spatial_dims=2, in_channels=2, out_channels=3, features=8).eval()
    dropout = UNet(spatial_dims=2, in_channels=2, out_channels=3, features=8, dropout=0.3).eval()
    dropout.load_state_dict(default.state_dict(), strict=True)  # dropout adds no parameter and renames none
    x = torch.randn(2, 2, 40, 36)
    with torch.no_grad():
        assert torch.equal(dropout(x), default(x))  # inactive in evaluation
        dropout.train()
        assert not torch.equal(dropout(x), default.train()(x))
    assert isinstance(dropout.inc[6], nn.Dropout) and dropout.inc[6].p == 0.3
    group = UNet(2, 2, 3, features=8, act=("leakyrelu", {"negative_slope": 0.1}), norm=("group", {"num_groups": 4}))
    assert isinstance(group.down2[1][1], nn.GroupNorm) and isinstance(group.up1.conv[2], nn.LeakyReLU)
    batch_parameters = {name for name, _ in default.named_parameters()}
    assert {name for name, _ in group.named_parameters()} == batch_parameters
    plain = UNet(3, 1, 2, features=4, norm=None)
    assert isinstance(plain.inc[1], nn.Identity) and plain.inc[0].bias is not None and default.inc[0].bias is None
    assert plain(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
@pytest.mark.parametrize("bilinear", [False, True])
def test_depth_sets_the_number_of_levels(depth, bilinear):
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, features=4, bilinear=bilinear, depth=depth).eval()
    assert [name for name, _ in net.named_children()] == ["inc"] + [f"down{i}" for i in range(1, depth + 1)] + [
        f"up{i}" for i in range(1, depth + 1)
    ] + ["outc"]
    bottom = net.downs[-1][1][3].out_channels
    assert bottom == 4 * 2**depth // (2 if bilinear else 1)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 37, 70)).shape == (2, 2, 37, 70)
    if depth == 4:
        assert count_parameters(net) == count_parameters(UNet(2, 1, 2, features=4, bilinear=bilinear))


def test_double_conv_second_conv_takes_mid_channels():
    block = DoubleConv(2, in_channels=8, out_channels=4, mid_channels=6)
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(6, 8, 3, 3), (4, 6, 3, 3)]


def test_pad_to_match_pads_each_dimension_from_both_tensors():
    x = torch.ones(1, 1, 4, 5)
    padded = pad_to_match(x, torch.zeros(1, 7, 5, 8))
    assert padded.shape == (1, 1, 5, 8)
    # height: 1 missing row goes after; width: 3 missing columns, 1 before and 2 after.
    assert torch.equal(padded[0, 0, :4, 1:6], x[0, 0])
    assert padded.sum() == x.sum()
    assert padded[0, 0, 4].abs().sum() == 0 and padded[0, 0, :, 0].abs().sum() == 0


@pytest.mark.parametrize("shape", [(2, 3, 37, 51), (1, 2, 9, 6, 7)])
def test_ceil_max_pool_equals_torch_ceil_mode(shape):
    x = torch.randn(shape)
    reference = (nn.MaxPool2d if len(shape) == 4 else nn.MaxPool3d)(2, 2, ceil_mode=True)(x)
    assert torch.equal(CeilMaxPool(len(shape) - 2)(x), reference)


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("spatial_size", [(64, 96), (37, 51)], ids=["2d", "2d_odd"])
def test_unet_2d_shapes(bilinear, spatial_size):
    net = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8, bilinear=bilinear).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 5, *spatial_size))
    assert out.shape == (2, 3, *spatial_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("bilinear", [False, True])
def test_unet_3d_shapes(bilinear):
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, features=4, bilinear=bilinear).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 20, 24, 28))
    assert out.shape == (1, 2, 20, 24, 28)


@pytest.mark.parametrize("spatial_size", [(64, 96), (37, 51)], ids=["2d", "2d_odd"])
def test_u2net_2d_shapes(spatial_size):
    net = U2Net(spatial_dims=2, in_channels=3, out_channels=2, variant="small").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *spatial_size))
    assert out.shape == (1, 2, *spatial_size)


def test_u2net_3d_shapes():
    net = U2Net(spatial_dims=3, in_channels=1, out_channels=2, variant="small").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 20, 24, 27))
    assert out.shape == (1, 2, 20, 24, 27)


def test_u2net_output_forms():
    torch.manual_seed(0)
    supervised = U2Net(spatial_dims=2, in_channels=3, out_channels=2, variant="small", deep_supervision=True)
    plain = copy.deepcopy(supervised)
    plain.deep_supervision = False
    x = torch.randn(2, 3, 45, 38)

    outputs = supervised.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 7
    assert all(o.shape == (2, 2, 45, 38) for o in outputs)
    fused = plain.train()(x)
    assert isinstance(fused, torch.Tensor)
    torch.testing.assert_close(outputs[0], fused, rtol=0, atol=0)
    # the fused map is the 1x1 convolution of the six sides, and the sides are distinct maps
    torch.testing.assert_close(supervised.fuse(torch.cat(outputs[1:], dim=1)), outputs[0])
    assert not torch.allclose(outputs[1], outputs[6])

    supervised.eval()
    with torch.no_grad():
        evaluated = supervised(x)
    assert isinstance(evaluated, torch.Tensor) and evaluated.shape == (2, 2, 45, 38)


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        UNet(spatial_dims=1)
    with pytest.raises(ValueError, match="depth must be positive"):
        UNet(depth=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        U2Net(variant="tiny")
    with pytest.raises(ValueError, match=r"expected a 4D input .* got shape \(1, 1, 8, 8, 8\)"):
        UNet(features=4)(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="expected a 5D input"):
        U2Net(spatial_dims=3, in_channels=1, variant="small")(torch.randn(1, 1, 8, 8))


def saved_activation_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Run a training step and return the bytes of distinct tensor storages autograd keeps for backward (weights
    excluded). Checkpointed blocks save only their inputs, everything else they compute is recomputed."""
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = net(x)
    out.square().mean().backward()
    return sum(saved.values())


@pytest.mark.parametrize("bilinear, depth", [(False, 4), (True, 4), (False, 3)])
def test_checkpointing_same_gradients_and_statistics_less_memory(bilinear, depth):
    torch.manual_seed(0)
    plain = UNet(spatial_dims=2, in_channels=1, out_channels=2, features=8, bilinear=bilinear, depth=depth).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointing = True
    x = torch.randn(2, 1, 67, 80)

    for net in (plain, checkpointed):
        net.zero_grad()
        net(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # batch-norm running statistics are updated once per step, not again during the recomputation
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(b, c), name

    plain_bytes = saved_activation_bytes(plain, x)
    checkpointed_bytes = saved_activation_bytes(checkpointed, x)
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)

    checkpointed.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make_net, example_size, min_size, test_size",
    [
        (lambda: UNet(spatial_dims=2, in_channels=3, out_channels=2, features=8), (64, 64), 32, (37, 51)),
        (
            lambda: UNet(spatial_dims=2, in_channels=3, out_channels=2, features=8, bilinear=True),
            (64, 64),
            32,
            (50, 33),
        ),
        (lambda: U2Net(spatial_dims=2, in_channels=3, out_channels=2, variant="small"), (96, 96), 64, (67, 81)),
    ],
    ids=["unet", "unet_bilinear", "u2net_small"],
)
@pytest.mark.slow
def test_torch_export_dynamic_spatial_size(make_net, example_size, min_size, test_size):
    torch.manual_seed(0)
    net = make_net().eval()
    height, width = Dim("height", min=min_size, max=1024), Dim("width", min=min_size, max=1024)
    exported = export(
        net,
        (torch.randn(2, 3, *example_size),),
        dynamic_shapes={"x": {0: Dim("batch", max=64), 2: height, 3: width}},
    )
    x = torch.randn(3, 3, *test_size)
    with torch.no_grad():
        expected = net(x)
        actual = exported.module()(x)
    assert actual.shape == (3, 2, *test_size)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def hippocampus_slice() -> tuple[torch.Tensor, torch.Tensor]:
    """The axial slice of a committed MSD hippocampus case with the most pixels of its rarer label, z-scored."""
    image = np.asarray(nib.load(SAMPLE_DATA / "imagesTr" / "hippocampus_004.nii.gz").dataobj, dtype=np.float32)
    label = np.asarray(nib.load(SAMPLE_DATA / "labelsTr" / "hippocampus_004.nii.gz").dataobj).astype(np.int64)
    both_labels = [min((label[..., k] == 1).sum(), (label[..., k] == 2).sum()) for k in range(label.shape[-1])]
    k = int(np.argmax(both_labels))
    assert both_labels[k] > 50
    image_slice = image[..., k]
    image_slice = (image_slice - image_slice.mean()) / image_slice.std()
    return torch.from_numpy(image_slice)[None, None], torch.from_numpy(label[..., k])[None, None]


def foreground_dice(logits: torch.Tensor, label: torch.Tensor) -> list[float]:
    prediction = logits.argmax(dim=1, keepdim=True)
    return [
        2.0 * ((prediction == c) & (label == c)).sum().item() / ((prediction == c).sum() + (label == c).sum()).item()
        for c in (1, 2)
    ]


@pytest.mark.parametrize(
    "make_net, lr, max_steps",
    [
        (lambda: UNet(spatial_dims=2, in_channels=1, out_channels=3, features=16), 1e-2, 150),
        (
            lambda: U2Net(spatial_dims=2, in_channels=1, out_channels=3, variant="small", deep_supervision=True),
            3e-3,
            120,
        ),
    ],
    ids=["unet", "u2net_small"],
)
@pytest.mark.slow
def test_overfit_one_hippocampus_slice(make_net, lr, max_steps):
    torch.manual_seed(0)
    image, label = hippocampus_slice()
    assert image.shape[-2:] == (36, 52)  # neither size is a multiple of 16
    net = make_net()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    if isinstance(net, U2Net):
        loss_fn = DeepSupervisionLoss(loss_fn, weight_mode="same")  # consumes the [fused, side_1..6] list
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    dice = [0.0, 0.0]
    for step in range(1, max_steps + 1):
        net.train()
        optimizer.zero_grad()
        loss_fn(net(image), label).backward()
        optimizer.step()
        if step % 10 == 0:
            net.eval()
            with torch.no_grad():
                dice = foreground_dice(net(image), label)
            if min(dice) > 0.9:
                break
    assert min(dice) > 0.9, dice
