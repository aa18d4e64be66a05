"""SlidingWindowSliceInferer's vectorised window batches: equal to a per-slice reference loop in every path."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from monai_unet2.inferers import SlidingWindowSliceInferer
from monai_unet2.inferers.window_batches import window_runs

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


def flip_softmax_predictor(network: torch.nn.Module):
    """nnU-Net style 2D mirroring: softmax of the four in-plane flips, flipped back and averaged."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        flips = [(), (-2,), (-1,), (-2, -1)]
        total = sum(
            torch.softmax(network(x.flip(d) if d else x), 1).flip(d) if d else torch.softmax(network(x), 1)
            for d in flips
        )
        return total / 4

    return predict


def reference_loop(volume, predictor, slice_axes, context, roi, overlap, mode, padding_mode="constant", cval=0.0):
    """Per slice: stack the clamped neighbour slices as channels and run MONAI's 2D ``sliding_window_inference``;
    average the views. A 2D batch ``(B, C, H, W)`` is one 2D sliding window."""
    volume = volume.float()
    cval = cval if padding_mode == "constant" else 0.0  # torch's F.pad takes no fill value in the other modes
    if volume.ndim == 4:
        return sliding_window_inference(volume, roi, 3, predictor, overlap, mode, padding_mode=padding_mode, cval=cval)
    views = []
    for axis in slice_axes:
        moved = volume.movedim(axis + 2, -1)
        num_slices = moved.shape[-1]
        slices = []
        for s in range(num_slices):
            neighbours = [min(max(s + o, 0), num_slices - 1) for o in range(-context, context + 1)]
            stacked = moved[..., neighbours].permute(0, 1, 4, 2, 3).flatten(1, 2)
            slices.append(
                sliding_window_inference(
                    stacked, roi, 3, predictor, overlap, mode, padding_mode=padding_mode, cval=cval
                )
            )
        views.append(torch.stack(slices, dim=-1).movedim(-1, axis + 2))
    return sum(views) / len(views)


# (input shape, slice axes, context, roi, overlap, mode, padding mode): 2.5D on every axis, several views, windows
# larger than the slice (padding), thin volumes whose every window clamps both neighbours, 2D batches
CASES = [
    ((2, 2, 11, 13, 9), (2,), 2, (5, 7), 0.25, "gaussian", "constant"),
    ((2, 2, 11, 13, 9), (0,), 1, (40, 6), 0.5, "constant", "replicate"),
    ((1, 1, 10, 12, 8), (1,), 2, (6, 12), 0.5, "gaussian", "reflect"),
    ((1, 1, 9, 8, 10), (0, 1, 2), 1, (5, 5), 0.5, "gaussian", "constant"),
    ((2, 1, 14, 12, 2), (2,), 2, (8, 8), 0.25, "constant", "constant"),
    ((3, 2, 17, 22), (2,), 2, (8, 9), 0.5, "gaussian", "replicate"),
    ((1, 3, 15, 14), (2,), 0, (20, 20), 0.25, "constant", "constant"),
]


@pytest.mark.parametrize("batching", ["runs", "indexed"])
@pytest.mark.parametrize("sw_batch_size", [1, 5, 64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_equals_reference_loop(batching, sw_batch_size, case):
    shape, axes, context, roi, overlap, mode, padding_mode = CASES[case]
    torch.manual_seed(case)
    volume = torch.randn(shape) + 1.0
    network = conv_net(shape[1] * (2 * context + 1 if len(shape) == 5 else 1))
    inferer = SlidingWindowSliceInferer(
        roi, sw_batch_size, axes, context, overlap, mode, padding_mode=padding_mode, cval=0.5, window_batching=batching
    )
    with torch.no_grad():
        ours = inferer(volume, network)
        expected = reference_loop(volume, network, axes, context, roi, overlap, mode, padding_mode, 0.5)
    assert ours.shape == (shape[0], 3, *shape[2:])
    assert torch.allclose(ours, expected, atol=TOL, rtol=0), (ours - expected).abs().max()


@pytest.mark.parametrize("batching", ["runs", "indexed"])
def test_flip_tta_and_integer_input_equal_reference_loop(batching):
    torch.manual_seed(21)
    volume = torch.randint(0, 200, (2, 1, 12, 10, 7), dtype=torch.uint8)
    network = conv_net(3)
    inferer = SlidingWindowSliceInferer(
        (6, 8), 6, 2, 1, 0.5, "gaussian", flip_tta=True, tta_activation="softmax", window_batching=batching
    )
    with torch.no_grad():
        ours = inferer(volume, network)
        expected = reference_loop(volume, flip_softmax_predictor(network), (2,), 1, (6, 8), 0.5, "gaussian")
    assert torch.allclose(ours, expected, atol=TOL, rtol=0)
    assert torch.allclose(ours.sum(1), torch.ones(1), atol=1e-5)


def test_channels_last_windows_give_the_same_output():
    torch.manual_seed(22)
    volume = torch.randn(1, 2, 16, 14, 9)
    seen = []
    network = conv_net(10)
    network[0].register_forward_pre_hook(
        lambda _, x: seen.append(x[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        plain = SlidingWindowSliceInferer((8, 8), 7, 2, 2, 0.5, "gaussian")(volume, network)
        assert seen and not any(seen)
        seen.clear()
        layout = SlidingWindowSliceInferer((8, 8), 7, 2, 2, 0.5, "gaussian", channels_last=True)(volume, network)
    assert seen and all(seen)
    assert torch.allclose(plain, layout, atol=TOL, rtol=0)


def test_output_is_dense_and_slice_major():
    """The output is laid out slice by slice in memory (blending writes whole rows), yet is an ordinary tensor."""
    volume = torch.randn(1, 1, 12, 10, 6)
    with torch.no_grad():
        out = SlidingWindowSliceInferer(None, 4, 2, 1)(volume, torch.nn.Conv2d(3, 2, 1))
    assert out.shape == (1, 2, 12, 10, 6)
    assert out.stride()[2:] == (10, 1, 120)  # H, W, D: each D slice is a contiguous (H, W) plane
    assert torch.equal(out.contiguous().view(-1), out.reshape(-1))


def test_batches_hold_at_most_two_runs_when_slices_outnumber_the_batch():
    """Windows are numbered slice-fastest, so with S >= sw_batch_size a batch never holds more than two runs: the
    Python work per batch does not grow with the number of windows."""
    num_slices, num_windows, batch_items, sw_batch_size = 155, 9, 2, 8
    total = batch_items * num_windows * num_slices
    covered = []
    for start in range(0, total, sw_batch_size):
        stop = min(start + sw_batch_size, total)
        runs = window_runs(start, stop, num_slices, num_windows)
        assert 1 <= len(runs) <= 2
        for run in runs:
            assert run.first_slice >= 0 and run.first_slice + run.length <= num_slices
            first = (run.batch_index * num_windows + run.window_index) * num_slices + run.first_slice
            assert first == start + run.offset
            covered.extend(range(first, first + run.length))
    assert covered == list(range(total))
    thin = window_runs(0, 8, num_slices=2, num_windows=4)
    assert [(r.window_index, r.first_slice, r.length) for r in thin] == [(0, 0, 2), (1, 0, 2), (2, 0, 2), (3, 0, 2)]


def test_whole_slices_rounded_up_to_the_network_stride_equal_the_padded_window():
    """``roi_size=None, size_divisible_by=16`` pads a 36×52 slice to 48×64: the same single window as an explicit
    48×64 ROI (the hippocampus bundle's training window), while a 100-pixel axis gets 112."""
    torch.manual_seed(23)
    volume = torch.randn(1, 1, 36, 52, 5)
    network = conv_net(5)
    recorder = []
    network[0].register_forward_pre_hook(lambda _, x: recorder.append(tuple(x[0].shape[2:])))
    with torch.no_grad():
        window = SlidingWindowSliceInferer((48, 64), 8, 2, 2, 0.5, "gaussian", padding_mode="replicate")(
            volume, network
        )
        whole = SlidingWindowSliceInferer(
            None, 8, 2, 2, 0.5, "gaussian", padding_mode="replicate", size_divisible_by=16
        )(volume, network)
        SlidingWindowSliceInferer((None, 20), 8, 0, 2, size_divisible_by=(16, 1))(
            torch.randn(1, 1, 4, 100, 20), network
        )
    assert torch.equal(window, whole)
    assert recorder[0] == recorder[-2] == (48, 64) and recorder[-1] == (112, 20)


def test_min_roi_size_keeps_whole_slices_at_least_the_training_window():
    """A 36×48 slice rounds up to 48×48, narrower than the 48×64 training window: ``min_roi_size`` keeps the padded
    training window for small slices (identical to an explicit 48×64 ROI) and one whole window for large ones."""
    torch.manual_seed(24)
    network = conv_net(5)
    shapes = []
    network[0].register_forward_pre_hook(lambda _, x: shapes.append(tuple(x[0].shape[2:])))
    small, large = torch.randn(1, 1, 36, 48, 5), torch.randn(1, 1, 100, 70, 3)
    whole = SlidingWindowSliceInferer(
        None, 8, 2, 2, 0.5, "gaussian", padding_mode="replicate", size_divisible_by=16, min_roi_size=(48, 64)
    )
    with torch.no_grad():
        window = SlidingWindowSliceInferer((48, 64), 8, 2, 2, 0.5, "gaussian", padding_mode="replicate")(small, network)
        assert torch.equal(whole(small, network), window)
        whole(large, network)
    assert shapes[-2] == (48, 64) and shapes[-1] == (112, 80)
