"""The fingerprint of a dataset: what the planning decisions depend on, measured once.

Like nnU-Net's ``DatasetFingerprintExtractor``: from every case's header the spacing and shape (in RAS axis order,
the order the bundles reorient to) and the grid checks (channels and label on one grid); from a deterministic sample
of cases the label values and their voxel frequencies, the intensities of the foreground per channel (a seeded
sample of voxels) and how much of each volume is non-zero. Headers cost milliseconds per case, so the whole dataset
is checked; voxel statistics read at most ``max_cases`` cases, evenly spread over the sorted case list.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import EnsureChannelFirst

from monai_unet2.data import DatalistError, DatasetDescription, DicomSeriesReader
from monai_unet2.transforms import SafeLoadImage, grid_distance_mm

__all__ = ["CaseGeometry", "case_geometry", "channel_modality", "fingerprint_dataset"]

logger = logging.getLogger(__name__)

_CT_NAMES = re.compile(r"(^|[^a-z])(ct|cect|ncct|cta)([^a-z]|$)", re.IGNORECASE)
_MR_NAMES = re.compile(
    r"(^|[^a-z])(mr|mri|t1|t1w|t1c|t1ce|t1gd|t2|t2w|flair|adc|dwi|pd|swi|hbv|dce)([^a-z0-9]|$)", re.IGNORECASE
)


class CaseGeometry:
    """A case's grid from its headers, with the axes permuted to RAS order.

    Attributes:
        channels: image channels.
        shape: voxels along R, A, S.
        spacing: voxel size in mm along R, A, S.
        axcodes: the orientation the file is stored in, e.g. ``"RAS"``, ``"LPS"``.
    """

    def __init__(self, channels: int, shape: Sequence[int], affine: np.ndarray) -> None:
        ornt = nib.orientations.io_orientation(affine)
        ras_axis = [int(axis) for axis in ornt[:, 0]]
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        self.channels = int(channels)
        self.shape = [0, 0, 0]
        self.spacing = [0.0, 0.0, 0.0]
        for array_axis, axis in enumerate(ras_axis):
            self.shape[axis] = int(shape[array_axis])
            self.spacing[axis] = float(zooms[array_axis])
        self.axcodes = "".join(nib.orientations.aff2axcodes(affine))


def _file_header(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a NIfTI file (header only) or a DICOM series folder (headers only, RAS)."""
    if path.endswith((".nii", ".nii.gz")):
        image = nib.load(path)
        return tuple(int(s) for s in image.shape), np.asarray(image.affine, dtype=np.float64)
    if not os.path.isdir(path):
        raise DatalistError(f"{path}: the planner reads NIfTI files (.nii, .nii.gz) and DICOM series folders")
    from monai.data.utils import orientation_ras_lps

    (series,) = DicomSeriesReader().read_series(path)
    return tuple(int(s) for s in series.spatial_shape), orientation_ras_lps(series.affine_lps)


def case_geometry(case: Mapping[str, Any], tolerance_mm: float = 1e-3) -> CaseGeometry:
    """The grid of a training case, after checking that its channel files and its label share it.

    Args:
        case: ``{"case", "image", "label"}`` (``image`` one path or one per channel).
        tolerance_mm: largest distance between where two files put the same voxel.

    Raises:
        DatalistError: naming the files, when channels or label are on different grids.
    """
    images = case["image"] if isinstance(case["image"], list) else [case["image"]]
    shape, affine = _file_header(images[0])
    channels = 1 if len(shape) == 3 else int(np.prod(shape[3:]))
    if len(shape) < 3 or (len(images) > 1 and len(shape) != 3):
        raise DatalistError(f"{images[0]}: a {len(shape)}D image; expected a 3D volume per channel file (or one 4D)")
    for other in images[1:]:
        other_shape, other_affine = _file_header(other)
        distance = grid_distance_mm(affine, other_affine, shape[:3]) if other_shape == shape else None
        if distance is None or distance > tolerance_mm:
            found = f"shape {other_shape} vs {shape}" if distance is None else f"voxels up to {distance:.4g} mm apart"
            raise DatalistError(
                f"{other} and {images[0]}: channels of case {case['case']} on different grids ({found})"
            )
    if len(images) > 1:
        channels = len(images)
    if "label" in case:
        label_shape, label_affine = _file_header(case["label"])
        spatial = tuple(s for s in label_shape if s != 1) if len(label_shape) > 3 else label_shape
        distance = grid_distance_mm(affine, label_affine, shape[:3]) if tuple(spatial) == tuple(shape[:3]) else None
        if distance is None or distance > tolerance_mm:
            found = (
                f"shape {label_shape} vs {shape[:3]}" if distance is None else f"voxels up to {distance:.4g} mm apart"
            )
            raise DatalistError(f"{case['label']} and {images[0]}: image and label on different grids ({found})")
    return CaseGeometry(channels, shape[:3], affine)


def channel_modality(name: str) -> str | None:
    """``"CT"`` or ``"MR"`` from a channel name (nnU-Net's ``channel_names``, the Decathlon's ``modality``), or
    ``"noNorm"`` (nnU-Net's name for a channel left as it is); ``None`` when the name does not say."""
    if name.strip().lower() == "nonorm":
        return "noNorm"
    if _CT_NAMES.search(name):
        return "CT"
    if _MR_NAMES.search(name):
        return "MR"
    return None


def _nonzero_box_fraction(nonzero: np.ndarray) -> float:
    """Share of the volume inside the bounding box of its non-zero voxels (from per-axis projections, so a large
    volume costs no index array)."""
    extents = []
    for axis in range(nonzero.ndim):
        projection = np.flatnonzero(np.any(nonzero, axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        extents.append(int(projection[-1] - projection[0] + 1) if projection.size else 0)
    return float(np.prod(extents) / nonzero.size)


def _evenly_spaced(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({int(i + 0.5) for i in np.linspace(0, count - 1, limit)})


def _round(value: float) -> float:
    """Six significant digits: what a plan needs, without float noise (29.900000000000002)."""
    return float(f"{float(value):.6g}")


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {key: 0.0 for key in ("mean", "std", "median", "percentile_00_5", "percentile_99_5", "min", "max")}
    values = values.astype(np.float64)
    return {
        "mean": _round(values.mean()),
        "std": _round(values.std()),
        "median": _round(np.median(values)),
        "percentile_00_5": _round(np.percentile(values, 0.5)),
        "percentile_99_5": _round(np.percentile(values, 99.5)),
        "min": _round(values.min()),
        "max": _round(values.max()),
    }


def _spread(rows: list[Sequence[float]]) -> dict[str, list[float]]:
    array = np.asarray(rows, dtype=np.float64)
    return {
        "median": [_round(v) for v in np.median(array, axis=0)],
        "min": [_round(v) for v in array.min(axis=0)],
        "max": [_round(v) for v in array.max(axis=0)],
        "percentile_10": [_round(v) for v in np.percentile(array, 10, axis=0)],
        "percentile_90": [_round(v) for v in np.percentile(array, 90, axis=0)],
    }


def fingerprint_dataset(
    dataset: DatasetDescription,
    labels: Mapping[str, str],
    channel_names: Mapping[str, str],
    max_cases: int = 40,
    samples_per_case: int = 10000,
    seed: int = 1234,
) -> dict[str, Any]:
    """Measure a dataset for planning.

    Args:
        dataset: the dataset (:func:`~monai_unet2.data.read_dataset`).
        labels: label value -> name the dataset is declared to have; a label file with another value is refused.
        channel_names: channel index -> name; a case with another channel count is refused.
        max_cases: at most this many cases are read for voxel statistics (evenly spread, deterministic).
        samples_per_case: foreground voxels sampled per case and channel for the intensity statistics.
        seed: seed of the voxel sampling.

    Returns:
        the fingerprint; ``_spacings`` and ``_shapes`` hold every case's spacing and shape (RAS order) for the
        decisions and are not written to ``plans.json``.

    Raises:
        DatalistError: naming the file: a case with another channel count, channels or label on different grids,
            label values not declared.
    """
    cases = dataset.training
    geometries = []
    for case in cases:
        geometry = case_geometry(case)
        if geometry.channels != len(channel_names):
            images = case["image"] if isinstance(case["image"], list) else [case["image"]]
            raise DatalistError(
                f"{images[0]}: case {case['case']} has {geometry.channels} channel(s), the dataset "
                f"{len(channel_names)} ({', '.join(channel_names.values())})"
            )
        geometries.append(geometry)
    nifti_loader = SafeLoadImage(image_only=True, reader="NibabelReader")
    dicom_loader = SafeLoadImage(image_only=True, reader=DicomSeriesReader())
    first = EnsureChannelFirst()

    def loader(image: str | list[str]) -> Any:
        paths = image if isinstance(image, list) else [image]
        nifti = all(str(path).endswith((".nii", ".nii.gz")) for path in paths)
        return (nifti_loader if nifti else dicom_loader)(image)

    rng = np.random.default_rng(seed)
    declared = {int(value) for value in labels}
    counts: Counter[int] = Counter()
    present: Counter[int] = Counter()
    foreground: list[list[np.ndarray]] = [[] for _ in channel_names]
    low_values: list[list[float]] = [[] for _ in channel_names]
    crop_fractions = []
    read = _evenly_spaced(len(cases), max_cases)
    for index in read:
        case = cases[index]
        image = np.asarray(first(loader(case["image"])), dtype=np.float32)
        label = np.asarray(first(loader(case["label"]))).reshape(image.shape[1:])
        values, value_counts = np.unique(label, return_counts=True)
        undeclared = [v for v in values.tolist() if float(v) not in declared]
        if undeclared:
            where = f"dataset.json ({dataset.manifest})" if dataset.manifest else "the labels given"
            raise DatalistError(
                f"{case['label']}: label values {', '.join(f'{v:g}' for v in undeclared)} are not in {where}: "
                f"{', '.join(f'{k} {n}' for k, n in labels.items())}"
            )
        for value, count in zip(values.tolist(), value_counts.tolist()):
            counts[int(value)] += int(count)
            present[int(value)] += 1
        mask = label > 0
        crop_fractions.append(_nonzero_box_fraction(np.any(image != 0, axis=0)))
        for channel in range(image.shape[0]):
            voxels = image[channel][mask]
            if voxels.size > samples_per_case:
                voxels = rng.choice(voxels, samples_per_case, replace=False)
            foreground[channel].append(voxels)
            low_values[channel].append(float(np.percentile(image[channel], 1)))
    total = sum(counts.values())
    fingerprint: dict[str, Any] = {
        "dataset": dataset.name,
        "layout": dataset.layout,
        "cases": len(cases),
        "cases_read": len(read),
        "test_cases": len(dataset.test),
        "orientation": Counter(g.axcodes for g in geometries).most_common(1)[0][0],
        "spacing": _spread([g.spacing for g in geometries]),
        "shape": _spread([g.shape for g in geometries]),
        "channels": {},
        "labels": {},
        "nonzero_crop_fraction": _round(np.median(crop_fractions)),
        "_spacings": [g.spacing for g in geometries],
        "_shapes": [g.shape for g in geometries],
    }
    median_spacing = fingerprint["spacing"]["median"]
    fingerprint["anisotropy"] = _round(max(median_spacing) / max(min(median_spacing), 1e-8))
    for channel, name in channel_names.items():
        samples = np.concatenate(foreground[int(channel)]) if foreground[int(channel)] else np.zeros(0)
        modality = channel_modality(name)
        guessed = modality is None
        if guessed:
            modality = "CT" if float(np.median(low_values[int(channel)])) < -500 else "other"
        fingerprint["channels"][channel] = {
            "name": name,
            "modality": modality,
            "modality_from": "intensities (the name does not say)" if guessed else "name",
            "foreground_intensity": _stats(samples),
        }
    for value, name in labels.items():
        fingerprint["labels"][value] = {
            "name": name,
            "voxel_fraction": _round(counts[int(value)] / total) if total else 0.0,
            "cases_present": present[int(value)],
        }
    return fingerprint
