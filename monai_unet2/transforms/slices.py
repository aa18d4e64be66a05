"""2.5D slice sampling: a 2D slice of a channel-first 3D volume with its neighbouring slices stacked as channels.

Channel order (shared with :class:`~monai_unet2.inferers.SlidingWindowSliceInferer`): for input channel ``c`` and
slice offset ``o`` in ``-context_slices..+context_slices``, the output channel is
``c * (2 * context_slices + 1) + (o + context_slices)``. Neighbours beyond the first/last slice replicate the
edge slice. MONAI has 3D patch samplers (``RandCropByPosNegLabeld``) and a one-slice ``SliceInferer``, but nothing
that turns neighbouring slices into channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = [
    "RandSliceWithContextD",
    "RandSliceWithContextDict",
    "RandSliceWithContextd",
    "SliceWithContextD",
    "SliceWithContextDict",
    "SliceWithContextd",
    "slice_affine",
    "stack_slice_context",
]

NdarrayOrTensor = np.ndarray | torch.Tensor


def stack_slice_context(volume: NdarrayOrTensor, index: int, slice_axis: int, context_slices: int) -> NdarrayOrTensor:
    """One slice of a ``(C, D0, D1, D2)`` volume along ``slice_axis``, with ``context_slices`` neighbours per side.

    Args:
        volume: channel-first 3D numpy array or tensor (a MetaTensor comes back as a plain tensor).
        index: slice index along ``slice_axis``.
        slice_axis: 0, 1 or 2, the spatial axis to slice along.
        context_slices: neighbours on each side; 0 gives the plain 2D slice.

    Returns:
        ``(C * (2 * context_slices + 1), H, W)``, where H, W are the two remaining spatial axes in order; channel
        ``c * (2k + 1) + (offset + k)`` holds channel ``c`` at slice ``clip(index + offset, 0, depth - 1)``.
    """
    if volume.ndim != 4:
        raise ValueError(f"expected a channel-first 3D volume (C, D0, D1, D2), got shape {tuple(volume.shape)}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    depth = volume.shape[slice_axis + 1]
    if not 0 <= index < depth:
        raise IndexError(f"slice index {index} out of range for {depth} slices along slice_axis {slice_axis}")
    neighbours = np.clip(np.arange(index - context_slices, index + context_slices + 1), 0, depth - 1)
    channels = volume.shape[0] * neighbours.size
    if isinstance(volume, torch.Tensor):
        plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
        picked = plain.index_select(slice_axis + 1, torch.as_tensor(neighbours, device=plain.device))
        picked = picked.movedim(slice_axis + 1, 1)
        return picked.reshape(channels, *picked.shape[2:])
    picked = np.moveaxis(np.take(volume, neighbours, axis=slice_axis + 1), slice_axis + 1, 1)
    return np.ascontiguousarray(picked.reshape(channels, *picked.shape[2:]))


def slice_affine(affine: torch.Tensor, index: int, slice_axis: int) -> torch.Tensor:
    """4x4 affine of slice ``index`` along ``slice_axis``: in-plane axes first, the slice axis third (size 1).

    The 2D array's pixel ``(i, j)`` sits at ``affine @ (i, j, 0, 1)``, the world position of its 3D voxel.
    """
    affine = torch.as_tensor(affine, dtype=torch.float64)
    kept = [a for a in range(3) if a != slice_axis]
    out = torch.eye(4, dtype=torch.float64)
    out[:3, 0], out[:3, 1], out[:3, 2] = affine[:3, kept[0]], affine[:3, kept[1]], affine[:3, slice_axis]
    out[:3, 3] = affine[:3, 3] + index * affine[:3, slice_axis]
    return out


def _foreground_slices(label: NdarrayOrTensor, slice_axis: int) -> np.ndarray:
    other = tuple(a for a in range(label.ndim) if a != slice_axis + 1)
    if isinstance(label, torch.Tensor):
        return (torch.as_tensor(label) > 0).any(dim=other[-1]).any(dim=other[-2]).any(dim=0).cpu().numpy()
    return np.asarray(label > 0).any(axis=other)


def _as_set(keys: KeysCollection | None) -> set:
    if keys is None:
        return set()
    return {keys} if isinstance(keys, (str, int)) else set(keys)


class _SliceMixin:
    """Cutting one dictionary into per-slice dictionaries; shared by the random and the deterministic sampler."""

    def _setup(
        self,
        keys: Sequence[Hashable],
        label_key: str | None,
        image_keys: KeysCollection | None,
        centre_only_keys: KeysCollection | None,
        slice_axis: int,
        context_slices: int,
        slice_index_key: str | None,
    ) -> None:
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        if context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {context_slices}")
        centre = {label_key} | _as_set(centre_only_keys)
        if image_keys is not None:
            both = _as_set(image_keys) & _as_set(centre_only_keys)
            if both:
                raise ValueError(f"keys {sorted(map(str, both))} are both image_keys and centre_only_keys")
            centre = set(keys) - _as_set(image_keys)
        self.context_keys = {k for k in keys if k not in centre}
        self.label_key = label_key
        self.slice_axis = slice_axis
        self.context_slices = context_slices
        self.slice_index_key = slice_index_key

    def _cut(self, data: Mapping[Hashable, Any], index: int) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(data):  # type: ignore[attr-defined]
            volume = data[key]
            context = self.context_slices if key in self.context_keys else 0
            sliced = stack_slice_context(volume, index, self.slice_axis, context)
            if isinstance(volume, MetaTensor):
                meta = {k: v for k, v in volume.meta.items() if k not in ("affine", "spatial_shape")}
                meta.update(
                    {
                        "spatial_shape": np.asarray(sliced.shape[1:]),
                        "slice_index": index,
                        "slice_axis": self.slice_axis,
                    }
                )
                sliced = MetaTensor(sliced, affine=slice_affine(volume.affine, index, self.slice_axis), meta=meta)
            out[key] = sliced
        if self.slice_index_key is not None:
            out[self.slice_index_key] = index
        return out

    def _depth(self, data: Mapping[Hashable, Any]) -> int:
        depths = {k: data[k].shape[self.slice_axis + 1] for k in self.key_iterator(data)}  # type: ignore[attr-defined]
        if len(set(depths.values())) != 1:
            raise ValueError(f"keys have different sizes along slice_axis {self.slice_axis}: {depths}")
        return next(iter(depths.values()))


class RandSliceWithContextd(Randomizable, MapTransform, _SliceMixin):
    """Draw ``num_samples`` 2.5D training slices from channel-first 3D volumes; returns a list of dicts.

    Like ``RandCropByPosNegLabeld``, the list is flattened into the batch by MONAI's ``list_data_collate``.
    Image-like keys become ``((2k + 1) * C, H, W)`` (see the module docstring for channel order); the label key and
    ``centre_only_keys`` (e.g. a signed distance map) keep only the centre slice, ``(C, H, W)``. MetaTensors stay
    MetaTensors with the 2D affine from :func:`slice_affine` and ``slice_index`` in their meta; they start
    with no ``applied_operations``, since a slice cannot be inverted back into the volume (the inferer
    reassembles volumes). Each dict also gets the slice index under ``slice_index_key``.

    Args:
        keys: keys of the volumes to slice (all must have the same size along ``slice_axis``).
        label_key: label used to find foreground slices (any channel > 0); it is centre-only if in ``keys``.
        slice_axis: spatial axis (0, 1 or 2 of the spatial dims) to slice along.
        context_slices: neighbours on each side stacked as channels (k); 0 is plain 2D.
        num_samples: slices drawn per call.
        pos_ratio: probability that a sample comes from a slice with foreground; otherwise from a slice without.
            When one of the two pools is empty, the sample comes from all slices.
        image_keys: if given, exactly these keys get context and every other key in ``keys`` is centre-only.
        centre_only_keys: further keys that keep only the centre slice (used when ``image_keys`` is None).
        slice_index_key: key of the slice index in each output dict (None: don't add it).
        allow_missing_keys: don't raise for keys missing from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        slice_axis: int = 2,
        context_slices: int = 1,
        num_samples: int = 4,
        pos_ratio: float = 0.5,
        image_keys: KeysCollection | None = None,
        centre_only_keys: KeysCollection | None = None,
        slice_index_key: str | None = "slice_index",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._setup(self.keys, label_key, image_keys, centre_only_keys, slice_axis, context_slices, slice_index_key)
        if not 0.0 <= pos_ratio <= 1.0:
            raise ValueError(f"pos_ratio must be in [0, 1], got {pos_ratio}")
        self.num_samples = num_samples
        self.pos_ratio = pos_ratio
        self.indices: list[int] = []

    def randomize(self, foreground: np.ndarray) -> None:
        """Choose ``num_samples`` slice indices given the per-slice foreground flags."""
        positive, negative, every = np.flatnonzero(foreground), np.flatnonzero(~foreground), np.arange(foreground.size)
        self.indices = []
        for _ in range(self.num_samples):
            pool = positive if self.R.rand() < self.pos_ratio else negative
            pool = pool if pool.size else every
            self.indices.append(int(pool[self.R.randint(pool.size)]))

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        depth = self._depth(data)
        if self.label_key is not None and self.label_key in data:
            foreground = _foreground_slices(data[self.label_key], self.slice_axis)
        else:
            foreground = np.zeros(depth, dtype=bool)
        self.randomize(foreground)
        return [self._cut(data, index) for index in self.indices]


class SliceWithContextd(MapTransform, _SliceMixin):
    """Deterministic counterpart of :class:`RandSliceWithContextd`: every ``stride``-th slice, as a list of dicts.

    Args:
        keys: keys of the volumes to slice.
        label_key: key that keeps only the centre slice (if in ``keys``).
        slice_axis: spatial axis (0, 1 or 2) to slice along.
        context_slices: neighbours on each side stacked as channels; 0 is plain 2D.
        stride: take slices ``0, stride, 2 * stride, ...``.
        image_keys: if given, exactly these keys get context.
        centre_only_keys: further centre-only keys (when ``image_keys`` is None).
        slice_index_key: key of the slice index in each output dict (None: don't add it).
        allow_missing_keys: don't raise for keys missing from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        slice_axis: int = 2,
        context_slices: int = 1,
        stride: int = 1,
        image_keys: KeysCollection | None = None,
        centre_only_keys: KeysCollection | None = None,
        slice_index_key: str | None = "slice_index",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._setup(self.keys, label_key, image_keys, centre_only_keys, slice_axis, context_slices, slice_index_key)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        return [self._cut(data, index) for index in range(0, self._depth(data), self.stride)]


RandSliceWithContextD = RandSliceWithContextDict = RandSliceWithContextd
SliceWithContextD = SliceWithContextDict = SliceWithContextd
