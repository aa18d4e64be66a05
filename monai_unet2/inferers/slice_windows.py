"""Window grid, neighbour-slice indices and output selection for :class:`SlidingWindowSliceInferer`.

The in-plane window grid is the same for every slice of a volume, so it is built once per call (and per view)
together with the blending weights already divided by the overlap count: writing ``prediction * weight`` into the
output is then the whole stitching step, and no volume-sized count map is ever needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.utils import BlendMode, ensure_tuple_rep, fall_back_tuple, look_up_option

__all__ = [
    "PlaneWindowGrid",
    "build_plane_window_grid",
    "neighbour_indices",
    "plane_scan_interval",
    "select_output",
]


def plane_scan_interval(
    plane_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]
) -> tuple[int, ...]:
    """Step between window starts, following the rule of MONAI's ``sliding_window_inference``.

    MONAI keeps this rule in a private helper (``monai.inferers.utils._get_scan_interval``); it is restated here
    (step ``int(roi * (1 - overlap))``, at least 1, and one window when it covers the axis) so that the grid is
    identical to MONAI's without depending on a private name.

    Args:
        plane_size: in-plane size after padding, one entry per axis.
        roi_size: window size, one entry per axis.
        overlap: fraction of overlap between neighbouring windows, one entry per axis.
    """
    intervals = []
    for size, roi, ovl in zip(plane_size, roi_size, overlap):
        intervals.append(roi if roi == size else max(int(roi * (1 - ovl)), 1))
    return tuple(intervals)


@dataclass(frozen=True)
class PlaneWindowGrid:
    """In-plane windows of one slice, shared by every slice of a view.

    Attributes:
        window_size: size of every window (the network input size).
        pad: ``F.pad`` amounts ``(left, right, top, bottom)`` applied to a window gathered from the plane, non-zero
            only along axes where the window is larger than the plane.
        source: per window, the region of the unpadded plane it reads (and writes back).
        crop: where the source region lies inside the window; the same for every window (a window is larger
            than the plane only along an axis where it is the only window).
        weights: ``(n_windows, 1, h, w)`` blending weights already divided by the overlap count, so that summing
            ``prediction * weight`` over windows gives the blended prediction.
    """

    window_size: tuple[int, int]
    pad: tuple[int, int, int, int]
    source: list[tuple[slice, slice]]
    crop: tuple[slice, slice]
    weights: torch.Tensor
    _indices: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.source)

    def source_indices(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_windows, h')`` row and ``(n_windows, w')`` column indices of every window's source region.

        Args:
            device: device of the indices (cached per device).
        """
        key = str(torch.device(device))
        if key not in self._indices:
            rows = torch.tensor([[*range(r.start, r.stop)] for r, _ in self.source], device=device)
            cols = torch.tensor([[*range(c.start, c.stop)] for _, c in self.source], device=device)
            self._indices[key] = (rows, cols)
        return self._indices[key]


def build_plane_window_grid(
    plane_size: Sequence[int],
    roi_size: Sequence[int | None] | int | None,
    overlap: Sequence[float] | float,
    mode: BlendMode | str,
    sigma_scale: Sequence[float] | float,
    device: torch.device | str,
    size_divisible_by: Sequence[int] | int = 1,
    min_roi_size: Sequence[int] | int | None = None,
) -> PlaneWindowGrid:
    """Build the window grid of a plane with MONAI's ``dense_patch_slices`` and ``compute_importance_map``.

    Like ``sliding_window_inference``, a plane smaller than the window is padded symmetrically (extra pixel after)
    to the window size and the grid lives in padded coordinates; the padding is applied per gathered window, never
    to the volume.

    Args:
        plane_size: ``(P, Q)`` size of a slice.
        roi_size: window size; ``None``, 0 or -1 entries mean the full slice extent.
        overlap: overlap fraction in ``[0, 1)``, one value or one per axis.
        mode: ``"constant"`` or ``"gaussian"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size (MONAI's default is 0.125).
        device: device of the weights (the device the network runs on).
        size_divisible_by: window sizes taken from the plane (``None`` / 0 / -1 entries of ``roi_size``) are rounded
            up to a multiple of this, one value or one per axis; the window is then larger than the plane and
            padded.
        min_roi_size: lower bound of window sizes taken from the plane (e.g. the training window), one value or
            one per axis; ``None`` for none.
    """
    plane = tuple(int(s) for s in plane_size)
    roi = fall_back_tuple(roi_size, plane)
    from_plane = [r is None or int(r) <= 0 for r in ensure_tuple_rep(roi_size, 2)]
    multiples = ensure_tuple_rep(size_divisible_by, 2)
    lower = ensure_tuple_rep(1 if min_roi_size is None else min_roi_size, 2)
    roi = tuple(
        max(-(-r // int(m)) * int(m), int(low)) if full else r
        for r, m, low, full in zip(roi, multiples, lower, from_plane)
    )
    overlaps = ensure_tuple_rep(overlap, 2)
    if any(not 0 <= o < 1 for o in overlaps):
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}.")
    padded = tuple(max(p, r) for p, r in zip(plane, roi))
    before = [(pp - p) // 2 for pp, p in zip(padded, plane)]
    after = [pp - p - b for pp, p, b in zip(padded, plane, before)]
    windows = dense_patch_slices(padded, roi, plane_scan_interval(padded, roi, overlaps))
    window_size = get_valid_patch_size(padded, roi)
    importance = compute_importance_map(
        window_size, mode=look_up_option(mode, BlendMode), sigma_scale=sigma_scale, device=device, dtype=torch.float32
    )
    count = torch.zeros(padded, dtype=torch.float32, device=device)
    for window in windows:
        count[window] += importance
    source, crops, weights = [], set(), []
    for window in windows:
        src, tgt = [], []
        for axis, sl in enumerate(window):
            start = max(sl.start - before[axis], 0)
            stop = min(sl.stop - before[axis], plane[axis])
            src.append(slice(start, stop))
            tgt.append(slice(start + before[axis] - sl.start, stop + before[axis] - sl.start))
        source.append((src[0], src[1]))
        crops.add(((tgt[0].start, tgt[0].stop), (tgt[1].start, tgt[1].stop)))
        weights.append(importance / count[window])
    if len(crops) != 1:
        raise RuntimeError(f"windows of one grid must share their crop inside the window, got {sorted(crops)}.")
    ((crop_rows, crop_cols),) = crops
    return PlaneWindowGrid(
        window_size=(int(window_size[0]), int(window_size[1])),
        pad=(before[1], after[1], before[0], after[0]),
        source=source,
        crop=(slice(*crop_rows), slice(*crop_cols)),
        weights=torch.stack(weights)[:, None],
    )


def neighbour_indices(num_slices: int, context_slices: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(num_slices, 2k+1)`` indices of slices ``s-k..s+k`` clamped to the volume.

    Indexing the slice axis with clamped indices is replicate padding without making a padded copy.

    Args:
        num_slices: length of the slice axis.
        context_slices: neighbours on each side (k).
        device: device of the returned indices (that of the volume).
    """
    offsets = torch.arange(-context_slices, context_slices + 1, device=device)
    centres = torch.arange(num_slices, device=device)[:, None]
    return (centres + offsets[None]).clamp_(0, num_slices - 1)


def select_output(prediction: Any, output_index: int | str) -> torch.Tensor:
    """Pick one tensor from a network output that may be a tensor, a list / tuple, or a dict.

    Args:
        prediction: what the network returned.
        output_index: position in a list / tuple (U2Net's deep-supervision list has the fused output first), key
            of a dict, or position among a dict's keys in insertion order.
    """
    if isinstance(prediction, torch.Tensor):
        return prediction
    if isinstance(prediction, Mapping):
        if isinstance(output_index, str):
            if output_index not in prediction:
                raise KeyError(f"network output has no key {output_index!r}; keys: {list(prediction)}.")
            return prediction[output_index]
        keys = list(prediction)
        if not -len(keys) <= output_index < len(keys):
            raise IndexError(f"output_index {output_index} out of range for a dict output with keys {keys}.")
        return prediction[keys[output_index]]
    if isinstance(prediction, Sequence):
        if isinstance(output_index, str):
            raise TypeError(f"output_index {output_index!r} is a key, but the network returned a {type(prediction)}.")
        if not -len(prediction) <= output_index < len(prediction):
            raise IndexError(f"output_index {output_index} out of range for {len(prediction)} network outputs.")
        return prediction[output_index]
    raise TypeError(f"network returned {type(prediction)}; expected a tensor, a list / tuple or a dict of tensors.")
