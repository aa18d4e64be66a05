"""Building and blending whole batches of 2.5D windows for :class:`SlidingWindowSliceInferer`.

Windows are numbered ``(batch item, in-plane window, slice)`` with the slice fastest, so a batch of
``sw_batch_size`` windows is a few *runs*: windows at one in-plane position on consecutive slices of one batch
item. A run is gathered with one strided copy (the neighbour slices of consecutive windows overlap, and
``Tensor.unfold`` along the slice axis turns a block of ``n + 2k`` slices into the ``n`` windows of ``2k + 1``
slices without copying), and blended with one ``addcmul_`` into a strided view of the output. With at least
``sw_batch_size`` slices a batch holds one or two runs, whatever the number of windows.

When runs are short (2D images, thin volumes) and the network runs on an accelerator, where every tensor operation
costs a launch, :func:`gather_indexed` and :func:`blend_indexed` build and blend the whole batch with one advanced
indexing gather and one ``index_put_(accumulate=True)`` instead. On a CPU the runs are faster even one window long:
the index kernels do per-element offset arithmetic, while the strided copies stream.

Why not MONAI: ``sliding_window_inference`` gathers and blends window by window (a Python loop over
``dense_patch_slices``) and has no notion of neighbour slices; ``torch.nn.functional.unfold`` / ``fold`` need a
regular grid, which MONAI's last window, aligned to the image end, breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.utils import PytorchPadMode

from monai_unet2.inferers.slice_windows import PlaneWindowGrid

__all__ = ["WindowRun", "blend_indexed", "blend_run", "gather_indexed", "gather_run", "window_runs"]


@dataclass(frozen=True)
class WindowRun:
    """Consecutive windows of one batch: one in-plane window position on consecutive slices of one batch item.

    Attributes:
        batch_index: batch item the windows come from.
        window_index: in-plane window position (index into the grid).
        first_slice: slice of the first window.
        length: number of windows (slices) in the run.
        offset: row of the first window in the window batch.
    """

    batch_index: int
    window_index: int
    first_slice: int
    length: int
    offset: int


def window_runs(start: int, stop: int, num_slices: int, num_windows: int) -> list[WindowRun]:
    """Split the windows ``start .. stop - 1`` (numbered batch item, window, slice; slice fastest) into runs.

    Args:
        start: number of the first window of the batch.
        stop: one past the number of the last window.
        num_slices: length of the slice axis.
        num_windows: in-plane windows per slice.
    """
    runs = []
    item = start
    while item < stop:
        batch_index, rest = divmod(item, num_windows * num_slices)
        window_index, first_slice = divmod(rest, num_slices)
        length = min(stop - item, num_slices - first_slice)
        runs.append(WindowRun(batch_index, window_index, first_slice, length, item - start))
        item += length
    return runs


def _pad_windows(windows: torch.Tensor, grid: PlaneWindowGrid, padding_mode: str, cval: float) -> torch.Tensor:
    """Pad ``(n, channels, h', w')`` windows to the window size when the window is larger than the plane."""
    mode = PytorchPadMode(padding_mode)
    extra = {"value": cval} if mode == PytorchPadMode.CONSTANT else {}
    return F.pad(windows, grid.pad, mode=mode.value, **extra)


def gather_run(
    stack: torch.Tensor,
    run: WindowRun,
    grid: PlaneWindowGrid,
    context: int,
    out: torch.Tensor,
    padding_mode: str,
    cval: float,
) -> None:
    """Copy the windows of ``run`` with their neighbour slices into ``out`` (channel ``c * (2k+1) + offset + k``).

    The block of the ``length + 2k`` slices the run needs is a view of the volume, unless it crosses the first or
    last slice (replicate padding of the slice axis: the edge slice is repeated, one small copy) or the slice axis
    is innermost in memory (then it is copied once in slice-major order, which streams).

    Args:
        stack: ``(B, C, S, P, Q)`` slice-major view of the input.
        run: the windows to gather.
        grid: the in-plane window grid.
        context: neighbours on each side (k).
        out: ``(N, C * (2k+1), h, w)`` window batch (any memory format); rows ``run.offset ..`` are written.
        padding_mode: in-plane padding mode when the window is larger than the plane.
        cval: fill value for constant padding.
    """
    channels, num_slices = stack.shape[1], stack.shape[2]
    rows, cols = grid.source[run.window_index]
    region = stack[run.batch_index, :, :, rows, cols]
    low, high = run.first_slice - context, run.first_slice + run.length + context
    if low >= 0 and high <= num_slices:
        block = region[:, low:high]
        if block.stride(1) < block.stride(3):
            # the slice axis is the innermost of the three in memory (D of a C-contiguous volume): one copy of
            # the block in slice-major order reads each voxel's neighbouring slices together, and the window copy
            # below then reads whole rows; copying straight from the volume would read a cache line per element
            block = block.contiguous()
    else:
        edge_before = region[:, :1].expand(-1, max(-low, 0), -1, -1)
        edge_after = region[:, -1:].expand(-1, max(high - num_slices, 0), -1, -1)
        block = torch.cat([edge_before, region[:, max(low, 0) : min(high, num_slices)], edge_after], dim=1)
    windows = block.unfold(1, 2 * context + 1, 1).permute(1, 0, 4, 2, 3)  # (n, C, 2k+1, h', w')
    target = out[run.offset : run.offset + run.length]
    if any(grid.pad):
        windows = _pad_windows(windows.flatten(1, 2).to(out.dtype), grid, padding_mode, cval)
        target.copy_(windows)
    else:
        target.unflatten(1, (channels, 2 * context + 1)).copy_(windows)


def blend_run(target: torch.Tensor, prediction: torch.Tensor, run: WindowRun, grid: PlaneWindowGrid) -> None:
    """Add ``prediction * weight`` of the windows of ``run`` to ``target`` in place.

    Args:
        target: ``(B, out, S, P, Q)`` slice-major view of the output.
        prediction: ``(N, out, h, w)`` predictions of the whole window batch (on the weights' device).
        run: the windows to blend.
        grid: the in-plane window grid (count-normalised weights).
    """
    crop_rows, crop_cols = grid.crop
    rows, cols = grid.source[run.window_index]
    part = prediction[run.offset : run.offset + run.length, :, crop_rows, crop_cols].transpose(0, 1)
    weight = grid.weights[run.window_index, :, crop_rows, crop_cols]  # (1, h', w')
    first = run.first_slice
    region = target[run.batch_index, :, first : first + run.length, rows, cols]  # (out, n, h', w')
    if region.device != part.device:
        region.add_((part * weight[:, None]).to(region.device))
    else:
        region.addcmul_(part, weight[:, None])


def _batch_windows(start: int, stop: int, num_slices: int, num_windows: int, device: torch.device):
    """``(batch item, window, slice)`` numbers of the windows ``start .. stop - 1`` as index tensors."""
    items = torch.arange(start, stop, device=device)
    batch_index = torch.div(items, num_windows * num_slices, rounding_mode="floor")
    rest = items - batch_index * (num_windows * num_slices)
    window_index = torch.div(rest, num_slices, rounding_mode="floor")
    return batch_index, window_index, rest - window_index * num_slices


def gather_indexed(
    stack: torch.Tensor,
    start: int,
    grid: PlaneWindowGrid,
    neighbours: torch.Tensor,
    out: torch.Tensor,
    padding_mode: str,
    cval: float,
) -> None:
    """Build the windows ``start .. start + len(out) - 1`` with one advanced-indexing gather into ``out``.

    Args:
        stack: ``(B, C, S, P, Q)`` slice-major view of the input.
        start: number of the first window of the batch.
        grid: the in-plane window grid.
        neighbours: ``(S, 2k+1)`` clamped neighbour slice indices, on the input's device.
        out: ``(N, C * (2k+1), h, w)`` window batch.
        padding_mode: in-plane padding mode when the window is larger than the plane.
        cval: fill value for constant padding.
    """
    channels, num_slices = stack.shape[1], stack.shape[2]
    count = out.shape[0]
    batch_index, window_index, slice_index = _batch_windows(start, start + count, num_slices, len(grid), stack.device)
    row_index, col_index = grid.source_indices(stack.device)
    windows = stack[
        batch_index[:, None, None, None, None],
        torch.arange(channels, device=stack.device)[None, :, None, None, None],
        neighbours[slice_index][:, None, :, None, None],
        row_index[window_index][:, None, None, :, None],
        col_index[window_index][:, None, None, None, :],
    ].flatten(1, 2)
    if any(grid.pad):
        windows = _pad_windows(windows.to(out.dtype), grid, padding_mode, cval)
    out.copy_(windows)


def blend_indexed(target: torch.Tensor, prediction: torch.Tensor, start: int, grid: PlaneWindowGrid) -> None:
    """Add ``prediction * weight`` of the windows ``start .. start + len(prediction) - 1`` with one
    ``index_put_(accumulate=True)`` (windows of one batch may overlap).

    Args:
        target: ``(B, out, S, P, Q)`` slice-major view of the output.
        prediction: ``(N, out, h, w)`` predictions of the window batch (on the weights' device).
        start: number of the first window of the batch.
        grid: the in-plane window grid.
    """
    num_slices, count = target.shape[2], prediction.shape[0]
    device = prediction.device
    batch_index, window_index, slice_index = _batch_windows(start, start + count, num_slices, len(grid), device)
    crop_rows, crop_cols = grid.crop
    weighted = prediction[:, :, crop_rows, crop_cols] * grid.weights[window_index][:, :, crop_rows, crop_cols]
    row_index, col_index = grid.source_indices(device)
    indices = (
        batch_index[:, None, None, None],
        torch.arange(target.shape[1], device=device)[None, :, None, None],
        slice_index[:, None, None, None],
        row_index[window_index][:, None, :, None],
        col_index[window_index][:, None, None, :],
    )
    if target.device != device:
        indices = tuple(index.to(target.device) for index in indices)
        weighted = weighted.to(target.device)
    target.index_put_(indices, weighted.to(target.dtype), accumulate=True)
