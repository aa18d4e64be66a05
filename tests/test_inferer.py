"""SlidingWindowSliceInferer: equality with explicit loops and MONAI inferers, multi-output, TTA, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, sliding_window_inference

from monai_unet2.inferers import SlidingWindowSliceInferer

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data"
HIPPOCAMPUS = SAMPLE_DATA / "imagesTr" / "hippocampus_004.nii.gz"
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")


def conv_net(in_channels: int, out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """Small deterministic 2D conv net with random weights (not flip-equivariant), in eval mode."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 6, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(6, out_channels, (3, 5), padding=(1, 2)),
    ).eval()


def explicit_loop(volume, network, slice_axis, context, roi, overlap, mode, sw_batch_size=3):
    """Reference: replicate-pad the slice axis, stack neighbours as channels, MONAI 2D sliding window per slice."""
    moved = volume.movedim(slice_axis + 2, -1).numpy()
    padded = torch.from_numpy(np.pad(moved, [(0, 0)] * 4 + [(context, context)], mode="edge"))
    outputs = []
    for s in range(moved.shape[-1]):
        neighbours = padded[..., s : s + 2 * context + 1]
        stacked = neighbours.permute(0, 1, 4, 2, 3).reshape(volume.shape[0], -1, *moved.shape[2:4])
        outputs.append(sliding_window_inference(stacked, roi, sw_batch_size, network, overlap, mode))
    return torch.stack(outputs, dim=-1).movedim(-1, slice_axis + 2)


WINDOW_CONFIGS = [
    ((5, 7), "gaussian", 0.25),
    ((5, 7), "constant", 0.5),
    ((40, 6), "constant", 0.25),
    ((40, 40), "gaussian", 0.5),
    ((-1, 4), "gaussian", 0.5),
]


@pytest.mark.parametrize("context", [0, 1, 2])
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_equals_explicit_loop(context, slice_axis):
    torch.manual_seed(1)
    volume = torch.randn(2, 2, 11, 13, 9)
    network = conv_net(2 * (2 * context + 1))
    with torch.no_grad():
        for roi, mode, overlap in WINDOW_CONFIGS:
            inferer = SlidingWindowSliceInferer(roi, 4, slice_axis, context, overlap, mode)
            ours = inferer(volume, network)
            expected = explicit_loop(volume, network, slice_axis, context, roi, overlap, mode)
            assert ours.shape == (2, 3, 11, 13, 9)
            assert ours.dtype == torch.float32
            assert torch.allclose(ours, expected, atol=TOL, rtol=0), (roi, mode, overlap)


def test_channel_order_and_edge_replication():
    volume = torch.arange(2 * 4 * 3 * 6, dtype=torch.float32).reshape(1, 2, 4, 3, 6)
    context = 2
    ours = SlidingWindowSliceInferer(None, 5, slice_axis=2, context_slices=context)(volume, torch.nn.Identity())
    assert ours.shape == (1, 2 * 5, 4, 3, 6)
    for c in range(2):
        for offset in range(-context, context + 1):
            for s in range(6):
                source = min(max(s + offset, 0), 5)
                assert torch.equal(ours[0, c * 5 + offset + context, :, :, s], volume[0, c, :, :, source])


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_channel_order_matches_the_training_transform(slice_axis):
    from monai_unet2.transforms.slices import stack_slice_context

    volume = torch.randn(2, 5, 6, 7)
    ours = SlidingWindowSliceInferer(None, 4, slice_axis, 2)(volume[None], torch.nn.Identity())[0]
    for index in range(volume.shape[slice_axis + 1]):
        expected = torch.as_tensor(stack_slice_context(volume, index, slice_axis, 2))
        assert torch.equal(ours.select(slice_axis + 1, index), expected)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_context_zero_matches_monai_slice_inferer(slice_axis):
    torch.manual_seed(2)
    volume = torch.randn(2, 1, 12, 15, 10)
    network = conv_net(1)
    with torch.no_grad():
        for roi, mode in [((6, 5), "gaussian"), ((6, 5), "constant"), ((20, 3), "gaussian")]:
            ours = SlidingWindowSliceInferer(roi, 7, slice_axis, 0, 0.5, mode)(volume, network)
            theirs = SliceInferer(roi_size=roi, sw_batch_size=4, spatial_dim=slice_axis, overlap=0.5, mode=mode)(
                volume, network
            )
            assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


def test_2d_input_equals_sliding_window_inference():
    torch.manual_seed(3)
    image = torch.randn(3, 2, 17, 22)
    network = conv_net(2)
    with torch.no_grad():
        for roi, mode, overlap in WINDOW_CONFIGS:
            ours = SlidingWindowSliceInferer(roi, 5, slice_axis=1, context_slices=2, overlap=overlap, mode=mode)(
                image, network
            )
            theirs = sliding_window_inference(image, roi, 2, network, overlap, mode)
            assert ours.shape == (3, 3, 17, 22)
            assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


def test_padding_mode_for_windows_larger_than_the_slice():
    torch.manual_seed(4)
    image = torch.randn(1, 1, 9, 7) + 3.0
    network = conv_net(1)
    with torch.no_grad():
        for padding_mode, cval in [("replicate", 0.0), ("constant", 2.5), ("reflect", 0.0)]:
            ours = SlidingWindowSliceInferer((16, 12), padding_mode=padding_mode, cval=cval)(image, network)
            theirs = sliding_window_inference(image, (16, 12), 1, network, padding_mode=padding_mode, cval=cval)
            assert torch.allclose(ours, theirs, atol=TOL, rtol=0)
        replicate = SlidingWindowSliceInferer((16, 12), padding_mode="replicate")(image, network)
        zeros = SlidingWindowSliceInferer((16, 12), padding_mode="constant")(image, network)
    assert (replicate - zeros).abs().max() > 1e-3


class MultiOutput(torch.nn.Module):
    """Returns the logits of two heads as a list, tuple or dict."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.first, self.second = conv_net(3, seed=5), conv_net(3, out_channels=2, seed=6)

    def forward(self, x):
        a, b = self.first(x), self.second(x)
        return {"list": [a, b], "tuple": (a, b), "dict": {"fused": a, "side": b}}[self.kind]


@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_multi_output_networks(kind):
    torch.manual_seed(7)
    volume = torch.randn(1, 1, 10, 9, 8)
    network = MultiOutput(kind)
    second = "side" if kind == "dict" else 1
    with torch.no_grad():
        first_out = SlidingWindowSliceInferer((6, 6), 4, 0, 1)(volume, network)
        second_out = SlidingWindowSliceInferer((6, 6), 4, 0, 1, output_index=second)(volume, network)
        assert torch.allclose(first_out, SlidingWindowSliceInferer((6, 6), 4, 0, 1)(volume, network.first), atol=TOL)
        assert torch.allclose(second_out, SlidingWindowSliceInferer((6, 6), 4, 0, 1)(volume, network.second), atol=TOL)
    assert second_out.shape[1] == 2
    with pytest.raises((IndexError, KeyError), match=r"out of range|no key"):
        SlidingWindowSliceInferer(context_slices=1, output_index="missing" if kind == "dict" else 5)(volume, network)


def in_plane_axes(slice_axis: int) -> tuple[int, int]:
    return tuple(a + 2 for a in range(3) if a != slice_axis)  # type: ignore[return-value]


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_flip_tta_equals_average_of_flipped_passes(slice_axis):
    torch.manual_seed(8)
    volume = torch.randn(1, 1, 9, 11, 7)
    network = conv_net(3)
    plain = SlidingWindowSliceInferer(None, 6, slice_axis, 1, tta_activation="softmax")
    tta = SlidingWindowSliceInferer(None, 6, slice_axis, 1, flip_tta=True, tta_activation="softmax")
    axes = in_plane_axes(slice_axis)
    with torch.no_grad():
        ours = tta(volume, network)
        manual = torch.zeros_like(ours)
        for dims in [(), (axes[0],), (axes[1],), axes]:
            flipped = volume.flip(dims) if dims else volume
            manual += plain(flipped, network).flip(dims) if dims else plain(flipped, network)
        manual /= 4
        assert torch.allclose(ours, manual, atol=TOL, rtol=0)
        assert torch.allclose(ours.sum(1), torch.ones(1), atol=1e-5)
        assert (ours - plain(volume, network)).abs().max() > 1e-3


@pytest.mark.parametrize(("slice_axis", "flip_axes"), [(2, (0,)), (0, (0, 2)), (1, (1,))])
def test_flip_axes_mirror_only_the_allowed_axes(slice_axis, flip_axes):
    """Only the allowed in-plane axes are mirrored; an allowed axis that is the slice axis is ignored."""
    torch.manual_seed(10)
    volume = torch.randn(1, 1, 9, 11, 7)
    network = conv_net(3)
    plain = SlidingWindowSliceInferer(None, 6, slice_axis, 1, tta_activation="softmax")
    tta = SlidingWindowSliceInferer(
        None, 6, slice_axis, 1, flip_tta=True, flip_axes=flip_axes, tta_activation="softmax"
    )
    mirrored = tuple(axis + 2 for axis in flip_axes if axis != slice_axis)
    passes = [()] + [(dim,) for dim in mirrored] + ([mirrored] if len(mirrored) == 2 else [])
    with torch.no_grad():
        ours = tta(volume, network)
        manual = sum(
            plain(volume.flip(dims), network).flip(dims) if dims else plain(volume, network) for dims in passes
        )
        assert torch.allclose(ours, manual / len(passes), atol=TOL, rtol=0)
        everything = SlidingWindowSliceInferer(None, 6, slice_axis, 1, flip_tta=True, tta_activation="softmax")
        assert (ours - everything(volume, network)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="flip_axes"):
        SlidingWindowSliceInferer(flip_tta=True, flip_axes=(3,), tta_activation="softmax")


def test_flip_tta_is_identity_for_a_flip_equivariant_network():
    torch.manual_seed(9)
    network = torch.nn.Conv2d(3, 2, 3, padding=1, bias=True).eval()
    with torch.no_grad():
        kernel = torch.randn(2, 3, 3, 3)
        network.weight.copy_(0.05 * (kernel + kernel.flip(-1) + kernel.flip(-2) + kernel.flip(-1, -2)))
    volume = torch.randn(1, 1, 12, 10, 6)
    with torch.no_grad():
        for roi in [(5, 4), None]:
            plain = SlidingWindowSliceInferer(roi, 8, 2, 1, 0.5, "gaussian", tta_activation="sigmoid")(volume, network)
            tta = SlidingWindowSliceInferer(roi, 8, 2, 1, 0.5, "gaussian", flip_tta=True, tta_activation="sigmoid")(
                volume, network
            )
            assert torch.allclose(plain, tta, atol=TOL, rtol=0)
            assert plain.min() > 0 and plain.max() < 1
    with pytest.raises(ValueError, match="tta_activation"):
        SlidingWindowSliceInferer(flip_tta=True)


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_multi_view_is_the_mean_of_single_views(activation):
    torch.manual_seed(10)
    volume = torch.randn(1, 1, 8, 8, 8)
    network = conv_net(3)
    with torch.no_grad():
        multi = SlidingWindowSliceInferer((5, 5), 4, (0, 1, 2), 1, tta_activation=activation)(volume, network)
        views = [
            SlidingWindowSliceInferer((5, 5), 4, d, 1, tta_activation=activation)(volume, network) for d in range(3)
        ]
    assert torch.allclose(multi, sum(views) / 3, atol=TOL, rtol=0)
    assert (views[0] - views[2]).abs().max() > 1e-3


def test_metatensor_meta_integer_input_and_autocast():
    affine = torch.diag(torch.tensor([0.8, 0.9, 2.5, 1.0], dtype=torch.float64))
    data = torch.randint(0, 255, (1, 1, 10, 12, 6), dtype=torch.uint8)
    volume = MetaTensor(data, affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    network = conv_net(3)
    inferer = SlidingWindowSliceInferer((8, 8), 4, 2, 1)
    with torch.no_grad():
        out = inferer(volume, network)
        expected = inferer(data.float(), network)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = inferer(data.float(), network)
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.affine, affine)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    assert out.dtype == torch.float32 and low.dtype == torch.float32
    assert torch.allclose(out.as_tensor(), expected, atol=TOL)
    assert torch.allclose(low, expected, atol=0.05 * expected.abs().max().item())


class BatchRecorder(torch.nn.Module):
    """Wraps a network and records the batch size of every call."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.sizes = network, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.network(x)


def test_windows_are_batched_across_slices():
    volume = torch.randn(2, 1, 14, 14, 5)
    recorder = BatchRecorder(conv_net(5))
    with torch.no_grad():
        batched = SlidingWindowSliceInferer((8, 8), 6, 2, 2, overlap=0.5)(volume, recorder)
        one_by_one = SlidingWindowSliceInferer((8, 8), 1, 2, 2, overlap=0.5, progress=True)(volume, recorder.network)
    windows = 2 * 5 * 9  # batch × slices × 3×3 windows per slice (starts 0, 4, 6)
    assert sum(recorder.sizes) == windows
    assert max(recorder.sizes) == 6 and len(recorder.sizes) == -(-windows // 6)
    assert torch.allclose(batched, one_by_one, atol=TOL, rtol=0)


# Runs in a fresh interpreter: the peak resident size of the pytest process (or ``ru_maxrss``, which Linux carries
# over fork + exec from the parent) holds whatever earlier tests allocated, so a rise could never show there. The
# probe resets the kernel's high-water mark (``clear_refs``) before each measurement and reads ``VmHWM``; where that
# is impossible it says so and the test is skipped rather than measuring nothing.
MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from monai_unet2.inferers import SlidingWindowSliceInferer

    def status(key):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmRSS")

    def peak():
        return status("VmHWM")

    try:
        reset_peak()
    except OSError as error:
        print(json.dumps({"skip": f"cannot reset the peak resident size: {error}"}))
        sys.exit(0)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(5, 2, 3, padding=1).eval()
    volume = torch.randn(1, 1, 128, 128, 256)
    inferer = SlidingWindowSliceInferer(None, 8, slice_axis=2, context_slices=2)
    with torch.no_grad():
        inferer(volume[..., :16], net)
        base = reset_peak()
        net(torch.randn(8, 5, 128, 128))
        activations = peak() - base
        base = reset_peak()
        out = inferer(volume, net)
        ours = peak() - base
        emulation = torch.stack([volume.roll(o, -1) for o in range(-2, 3)], 2)
        probe = peak() - base
    numbers = {"volume": volume.nbytes, "output": out.nbytes, "activations": activations, "ours": ours, "probe": probe}
    print(json.dumps(numbers))
    """
)


def test_peak_memory_has_no_stacked_volume():
    """Peak RSS rise of a k=2 run, less output and network workspace, stays below one input volume (not 5)."""
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # large blocks go back to the OS on free
    command = [sys.executable, "-c", MEMORY_PROBE]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=environment, check=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in numbers:
        pytest.skip(numbers["skip"])
    volume_bytes = numbers["volume"]
    extra = numbers["ours"] - numbers["output"] - numbers["activations"]
    assert extra < volume_bytes, numbers
    assert numbers["probe"] - numbers["ours"] > 4 * volume_bytes, numbers


def test_clear_errors_for_bad_inputs():
    network = conv_net(3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C, H, W, D\)"):
        SlidingWindowSliceInferer(context_slices=1)(torch.randn(4, 8, 8), network)
    with pytest.raises(ValueError, match="3 input channels = C \\* \\(2 \\* context_slices \\+ 1\\)"):
        SlidingWindowSliceInferer(context_slices=1)(torch.randn(1, 1, 8, 8, 4), torch.nn.Conv2d(3, 2, 3, stride=2))
    with pytest.raises(ValueError, match="slice_axis"):
        SlidingWindowSliceInferer(slice_axis=3)
    with pytest.raises(ValueError, match="roi_size must be 2D"):
        SlidingWindowSliceInferer(roi_size=(8, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_windows_on_gpu_volume_and_output_on_cpu():
    torch.manual_seed(13)
    volume = torch.randn(1, 1, 20, 18, 7)
    network = conv_net(3)
    with torch.no_grad():
        expected = SlidingWindowSliceInferer((8, 8), 4, 2, 1, mode="gaussian")(volume, network)
        ours = SlidingWindowSliceInferer((8, 8), 4, 2, 1, mode="gaussian", sw_device="cuda", device="cpu")(
            volume, network.cuda()
        )
    assert ours.device.type == "cpu"
    assert torch.allclose(ours, expected, atol=1e-4)


def hippocampus_volume() -> torch.Tensor:
    image = np.asarray(nib.load(str(HIPPOCAMPUS)).dataobj, dtype=np.float32)
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image)[None, None]


def test_hippocampus_unet_end_to_end():
    from monai_unet2.networks import UNet

    volume = hippocampus_volume()
    torch.manual_seed(11)
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval()
    with torch.no_grad():
        ours = SlidingWindowSliceInferer((32, 32), 16, 2, 2, 0.5, "gaussian")(volume, network)
        expected = explicit_loop(volume, network, 2, 2, (32, 32), 0.5, "gaussian", sw_batch_size=4)
    assert ours.shape == (1, 3, *volume.shape[2:])
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, expected, atol=1e-4, rtol=0)


def test_hippocampus_u2net_small_with_deep_supervision():
    from monai_unet2.networks import U2Net

    volume = hippocampus_volume()[..., 10:16]
    torch.manual_seed(12)
    network = U2Net(spatial_dims=2, in_channels=3, out_channels=3, variant="small", deep_supervision=True)
    inferer = SlidingWindowSliceInferer(None, 6, 2, 1, tta_activation="softmax")
    with torch.no_grad():
        network.train()
        sides = network(torch.randn(2, 3, 32, 32))
        assert isinstance(sides, (list, tuple)) and len(sides) == 7
        fused = inferer(volume, network)
        fused_only = inferer(volume, lambda x: network(x)[0])
        network.eval()
        evaluated = inferer(volume, network)
    assert fused.shape == evaluated.shape == (1, 3, *volume.shape[2:])
    assert torch.allclose(fused, fused_only, atol=TOL, rtol=0)
    assert torch.allclose(evaluated.sum(1), torch.ones(1), atol=1e-5)
