"""Planning decisions from a dataset fingerprint, each with the reason it was taken.

Every function takes facts and returns ``(value, reason)``; none reads files or measures time, so a plan is a
deterministic function of the fingerprint, the measured step time and the options. The rules follow nnU-Net's
planner where it has one (target spacing, CT normalisation, the non-zero mask), adapted to a 2D network fed with
neighbouring slices (slice axis, context slices, in-plane window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "DEFAULT_NETWORK",
    "batch_size",
    "context_slices",
    "normalization",
    "roi_size",
    "slice_axis",
    "target_spacing",
    "views",
]

#: nnU-Net's threshold: an axis more than 3 times coarser than the finest is "anisotropic"
ANISOTROPY_THRESHOLD = 3.0
#: UNet with 4 poolings: window sides are multiples of 2**4
WINDOW_MULTIPLE = 16
#: largest in-plane window side; larger slices are covered by the sliding window at inference
MAX_WINDOW = 256
#: pixels of one training batch (slices x window) on a CPU: 32 slices of 48 x 64
CPU_BATCH_PIXELS = 32 * 48 * 64
DEFAULT_NETWORK = {"_target_": "monai_unet2.networks.UNet", "spatial_dims": 2, "features": 32}
_AXES = ("R-L (sagittal slices)", "A-P (coronal slices)", "S-I (axial slices)")
#: the name of the view that slices across each RAS axis
VIEW_NAMES = ("sagittal", "coronal", "axial")
_MM = "{:.3g}"


def _mm(values: Sequence[float]) -> str:
    return " x ".join(_MM.format(v) for v in values) + " mm"


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[list[float], str]:
    """nnU-Net's target spacing: the median spacing; for anisotropic data (the coarsest axis more than 3 times the
    finest, and the volumes not thicker along it than 3 times less than across) the coarse axis takes the 10th
    percentile of its spacings instead, so thin-slice cases are not blurred to the thickest slices.

    Args:
        spacings: ``(cases, 3)`` voxel sizes in mm, RAS order.
        shapes: ``(cases, 3)`` voxel counts, RAS order.
    """
    target = np.median(spacings, axis=0)
    sizes = np.median(shapes * spacings / target, axis=0)
    worst = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
    aniso_voxels = sizes[worst] * ANISOTROPY_THRESHOLD < min(sizes[others])
    reason = f"the median voxel size of the cases, {_mm(target)}"
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        coarse = max(coarse, float(max(target[others])) + 1e-5)
        reason += (
            f"; the data are anisotropic (axis {worst} {target[worst]:.3g} mm > 3 x {min(target[others]):.3g} mm), "
            f"so that axis takes the 10th percentile of its spacings, {coarse:.3g} mm (nnU-Net's rule)"
        )
        target[worst] = coarse
    elif np.allclose(spacings, spacings[0], rtol=1e-3):
        reason = f"every case is {_mm(spacings[0])}: resampling changes nothing on this data, and inputs at another spacing are resampled to it and written back on their own grid"
    rounded = [round(float(v), 4) for v in target]
    return rounded, reason


def slice_axis(spacing: Sequence[float]) -> tuple[int, str]:
    """The coarsest axis when it is clearly coarser (by more than 25%) than the other two: slices then keep the
    full in-plane resolution and neighbours are whole acquired slices; otherwise axis 2 (axial slices in RAS).

    Args:
        spacing: the target spacing in RAS order.
    """
    coarse = int(np.argmax(spacing))
    others = [spacing[axis] for axis in range(3) if axis != coarse]
    if spacing[coarse] > 1.25 * max(others):
        return coarse, (
            f"axis {coarse} ({_AXES[coarse]}) has the coarsest spacing ({spacing[coarse]:.3g} mm against "
            f"{max(others):.3g} mm): slicing across it keeps every slice at full in-plane resolution"
        )
    return 2, "no axis is clearly coarser than the others (within 25%): axial slices (axis 2 after RAS reorientation)"


def _in_plane(axis: int) -> list[int]:
    return [other for other in range(3) if other != axis]


def roi_size(resampled_shapes: np.ndarray, axis: int) -> tuple[list[int], str]:
    """The in-plane window: the largest in-plane extent of any case (after resampling), rounded up to a multiple
    of 16 (the UNet's four poolings), at most 256 per side (larger slices are covered by the sliding window).

    Args:
        resampled_shapes: ``(cases, 3)`` voxel counts after resampling to the target spacing, RAS order.
        axis: the slice axis.
    """
    plane = _in_plane(axis)
    largest = [math.ceil(float(resampled_shapes[:, p].max())) for p in plane]
    window = [min(MAX_WINDOW, WINDOW_MULTIPLE * math.ceil(extent / WINDOW_MULTIPLE)) for extent in largest]
    reason = f"the largest in-plane extent is {largest[0]} x {largest[1]} voxels"
    if all(w >= e for w, e in zip(window, largest)):
        reason += (
            f": one {window[0]} x {window[1]} window (multiples of 16 for the UNet's four poolings) covers every slice"
        )
    else:
        reason += f"; windows of at most {MAX_WINDOW} per side ({window[0]} x {window[1]}) slide over larger slices"
    return window, reason


def views(
    spacing: Sequence[float], resampled_shapes: np.ndarray, axis: int, requested: bool
) -> tuple[dict[str, dict[str, Any]], str]:
    """Extra slice orientations for multi-view fusion: the two other axes, each with its own window (:func:`roi_size`).

    Only when requested (``plan --views``; each view is one more training of the budget) and only for
    (near-)isotropic spacing, where the other orientations see slices as fine as the primary's.

    Args:
        spacing: the target spacing in RAS order.
        resampled_shapes: ``(cases, 3)`` voxel counts after resampling, RAS order.
        axis: the primary slice axis.
        requested: whether ``--views`` asked for them.
    """
    if not requested:
        return {}, (
            "one slice orientation; plan --views adds the other two (one more training each, fused at inference: "
            "+0.9 / +1.4 Dice points on the hippocampus bundle)"
        )
    if max(spacing) > 1.25 * min(spacing):
        return {}, (
            f"--views asked for, but the spacing {_mm(spacing)} is anisotropic (more than 25%): other orientations "
            "would see coarse, interpolated slices, so one orientation"
        )
    extra = {}
    for other in (other for other in (1, 0, 2) if other != axis):
        extra[VIEW_NAMES[other]] = {"slice_axis": other, "roi_size": roi_size(resampled_shapes, other)[0]}
    described = " and ".join(
        f"{name} (axis {view['slice_axis']}, {view['roi_size'][0]} x {view['roi_size'][1]})"
        for name, view in extra.items()
    )
    return extra, (
        f"--views on near-isotropic data: {described} models, each trained with --view <name> for the same budget, "
        "are fused with the primary one by mean probability (+0.9 / +1.4 Dice points on the hippocampus bundle)"
    )


def context_slices(spacing: Sequence[float], axis: int, depth: float) -> tuple[int, str]:
    """Neighbouring slices on each side fed as channels: 2 (the shipped hippocampus bundle gained 1.1-1.3 Dice
    points over plain 2D with them), 1 for thick slices (more than 3 times the in-plane spacing: neighbours two
    slices away are far), none for single-slice data; never more than the median volume holds.

    Args:
        spacing: the target spacing.
        axis: the slice axis.
        depth: median number of slices along the slice axis after resampling.
    """
    thickness = spacing[axis] / min(spacing[other] for other in _in_plane(axis))
    if depth < 2:
        return 0, "the volumes are single slices: plain 2D"
    if thickness > ANISOTROPY_THRESHOLD:
        value, reason = (
            1,
            f"slices are {thickness:.3g} times thicker than the in-plane spacing: one neighbour on each side",
        )
    else:
        value, reason = (
            2,
            (
                "two neighbouring slices on each side: on the hippocampus bundle they gained 1.1-1.3 Dice points per class "
                "over plain 2D (context_slices 0) at the same training budget"
            ),
        )
    limit = max(0, int((depth - 1) // 2))
    if value > limit:
        value, reason = limit, f"the median volume has {depth:.0f} slices: {limit} neighbour(s) on each side"
    return value, reason


def normalization(channels: Mapping[str, Mapping[str, Any]], crop_fraction: float) -> tuple[dict[str, Any], str]:
    """nnU-Net's normalisation per channel: CT channels clipped to the 0.5 / 99.5 percentiles of the training
    set's foreground intensities and z-scored with its foreground mean and standard deviation (Hounsfield units
    are absolute: one mapping for all volumes); other channels z-scored per volume, over the non-zero voxels only
    when the volumes have a zero background that cropping to the non-zero region would shrink by a quarter or more
    (skull-stripped MR).

    Args:
        channels: the fingerprint's channels (``modality`` and ``foreground_intensity`` of each).
        crop_fraction: median fraction of a volume inside its non-zero bounding box.
    """
    nonzero = crop_fraction < 0.75
    zscore_reason = (
        f"z-score per volume over the non-zero voxels only (the non-zero region is {crop_fraction:.0%} of a volume: "
        "a zero background that must stay zero)"
        if nonzero
        else "z-score per volume"
    )
    schemes, reasons = [], []
    for index, channel in channels.items():
        modality = channel["modality"]
        if modality == "CT":
            stats = channel["foreground_intensity"]
            schemes.append(
                {
                    "name": "ct",
                    "lower": round(stats["percentile_00_5"], 4),
                    "upper": round(stats["percentile_99_5"], 4),
                    "mean": round(stats["mean"], 4),
                    "std": round(max(stats["std"], 1e-8), 4),
                }
            )
            reasons.append(
                f"channel {index} ({channel['name']}, CT): clip to the foreground's 0.5 / 99.5 percentiles "
                f"[{stats['percentile_00_5']:.4g}, {stats['percentile_99_5']:.4g}], then z-score with its mean "
                f"{stats['mean']:.4g} and standard deviation {stats['std']:.4g}"
            )
        elif modality == "noNorm":
            schemes.append({"name": "none"})
            reasons.append(f"channel {index} ({channel['name']}): left as it is (noNorm)")
        else:
            schemes.append({"name": "zscore", "nonzero": nonzero})
            reasons.append(f"channel {index} ({channel['name']}, {modality}): {zscore_reason}")
    names = {scheme["name"] for scheme in schemes}
    if names == {"zscore"}:
        kind = "MR" if all(c["modality"] == "MR" for c in channels.values()) else "non-CT"
        return {"name": "zscore", "channel_wise": True, "nonzero": nonzero}, (
            f"{kind} intensities have no absolute scale: {zscore_reason}, each channel on its own"
        )
    if names == {"ct"}:
        keys = ("lower", "upper", "mean", "std")
        return {"name": "ct", **{key: [scheme[key] for scheme in schemes] for key in keys}}, "; ".join(reasons)
    return {"name": "per_channel", "channels": schemes}, "; ".join(reasons)


def batch_size(roi: Sequence[int], training_cases: int, gpu: bool) -> tuple[int, int, str]:
    """Slices per training step: about 100 k pixels on a CPU (32 slices of 48 x 64), 16 times that on a GPU, at
    least 2 and at most 64; drawn as 8 slices (``slices_per_volume``) from each of ``volumes_per_batch`` volumes,
    and no more volumes than a fold trains on.

    Args:
        roi: the in-plane window.
        training_cases: cases in the training part of a fold.
        gpu: whether the planning machine has a GPU.

    Returns:
        ``(volumes_per_batch, slices_per_volume, reason)``.
    """
    pixels = CPU_BATCH_PIXELS * (16 if gpu else 1)
    slices = int(min(64, max(2, pixels // (roi[0] * roi[1]))))
    per_volume = min(8, slices)
    volumes = max(1, min(slices // per_volume, training_cases))
    reason = (
        f"{'a GPU' if gpu else 'a CPU'} step of about {pixels // 1000}k pixels: {volumes * per_volume} slices of "
        f"{roi[0]} x {roi[1]}, {per_volume} from each of {volumes} volume(s)"
    )
    return volumes, per_volume, reason
