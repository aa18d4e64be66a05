"""Plan a bundle for a dataset: fingerprint -> decisions (each with its reason) -> ``plans.json`` content and folds.

The plan is what nnU-Net's ``nnUNetv2_plan_and_preprocess`` produces for its 3D and 2D configurations, for the
2.5D pipeline of this package: target spacing, slice axis, context slices, in-plane window, normalisation, network,
batch, and a training budget from a step time measured on this machine (:mod:`monai_unet2.planning.timing`). The
bundle files are written by :mod:`monai_unet2.planning.bundle_writer`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monai_unet2.data import DatalistError, DatasetDescription, make_splits, read_dataset

from . import decisions
from .fingerprint import fingerprint_dataset
from .overrides import apply_overrides
from .timing import STEP_OVERHEAD, budget_epochs, measure_seconds

__all__ = ["PLANS_VERSION", "Plan", "plan_dataset"]

logger = logging.getLogger(__name__)

PLANS_VERSION = 2
LEARNING_RATE = 0.002
DESCRIPTION = (
    "Dataset facts and pipeline decisions of this bundle, stated once: train.json, evaluate.json and inference.json "
    "read them with monai_unet2.bundle_config.read_plans and expose each as a config id of the same name. Labels "
    "and input channels are in metadata.json (channel_def), the cross-validation folds in splits.json. "
    "'fingerprint' describes the data the decisions were made on, 'measured' the machine the budget was measured "
    "on, 'overrides' the decisions set by hand, and 'reasons' says why each decision was taken."
)


@dataclass
class Plan:
    """A planned bundle, before it is written.

    Attributes:
        plans: the content of ``configs/plans.json``.
        splits: the folds (``configs/splits.json``).
        labels: label value -> name, background included.
        channel_names: input channel index -> name.
        dataset: the dataset planned for.
        seconds: how long planning took.
    """

    plans: dict[str, Any]
    splits: list[dict[str, list[str]]]
    labels: dict[str, str]
    channel_names: dict[str, str]
    dataset: DatasetDescription
    seconds: float


def _names(dataset: DatasetDescription, labels: Mapping[str, str] | None, channels: Mapping[str, str] | None):
    """Label and channel names: the dataset's, completed or replaced by the ones given on the command line."""
    label_names = dict(dataset.labels)
    if labels:
        given = {str(int(value)): str(name) for value, name in labels.items()}
        label_names = {**label_names, **given}
        label_names.setdefault("0", "background")
    if not label_names:
        raise DatalistError(
            f"{dataset.root}: the dataset does not name its labels (no dataset.json labels); pass "
            '--labels \'{"1": "liver", "2": "tumour"}\''
        )
    values = sorted(int(value) for value in label_names)
    if values != list(range(len(values))):
        raise DatalistError(f"label values must be 0 (background), 1, ..., n-1 without gaps; got {values}")
    label_names = {str(value): label_names[str(value)] for value in values}
    channel_names = dict(channels) if channels else dict(dataset.channel_names)
    if not channel_names:
        first = dataset.training[0]["image"]
        channel_names = (
            {"0": "image"} if isinstance(first, str) else {str(i): f"channel_{i}" for i in range(len(first))}
        )
        if isinstance(first, str) and first.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(first).shape
            if len(shape) == 4 and shape[3] > 1:
                channel_names = {str(i): f"channel_{i}" for i in range(shape[3])}
    return label_names, {str(k): str(v) for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0]))}


def _windows_per_slice(extent: list[float], roi: list[int]) -> int:
    count = 1
    for size, window in zip(extent, roi):
        count *= 1 if size <= window else math.ceil((size - window) / (0.5 * window)) + 1
    return count


def plan_dataset(
    dataset_dir: str | os.PathLike,
    time_budget_minutes: float = 60.0,
    num_folds: int = 5,
    split_method: str = "interleaved",
    split_seed: int = 12345,
    overrides: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    channel_names: Mapping[str, str] | None = None,
    max_cases: int = 40,
    step_seconds: float | None = None,
    allow_outside_root: bool = False,
    views: bool = False,
) -> Plan:
    """Fingerprint the dataset and take every planning decision.

    Args:
        dataset_dir: the dataset (nnU-Net v2, Decathlon, or ``imagesTr``/``labelsTr``).
        time_budget_minutes: wall time for training one fold on this machine, validation included.
        num_folds: cross-validation folds (fewer when there are fewer cases).
        split_method: ``"interleaved"`` or ``"random"`` (:func:`~monai_unet2.data.make_splits`).
        split_seed: seed of ``"random"`` folds.
        overrides: decisions set by hand (``{"max_epochs": 30, "network.features": 16}``).
        labels: label value -> name, for datasets whose ``dataset.json`` does not name them (or to rename them).
        channel_names: channel index -> name (the name says the modality: ``CT``, ``T2``, ...).
        max_cases: cases read for the voxel statistics.
        step_seconds: a training step's seconds to plan with instead of measuring (makes the plan independent of the
            machine).
        allow_outside_root: accept dataset files that resolve outside ``dataset_dir``.
        views: plan extra slice orientations for multi-view fusion (near-isotropic data only; one more training
            per view), see :func:`monai_unet2.planning.decisions.views`.
    """
    start = time.perf_counter()
    overrides = dict(overrides or {})
    dataset = read_dataset(dataset_dir, allow_outside_root)
    label_names, channel_names = _names(dataset, labels, channel_names)
    fingerprint = fingerprint_dataset(dataset, label_names, channel_names, max_cases=max_cases)
    splits = make_splits([case["case"] for case in dataset.training], num_folds, split_method, split_seed)
    plans: dict[str, Any] = {"plans_version": PLANS_VERSION, "description": DESCRIPTION}
    plans["dataset_dir"] = str(dataset.root)
    plans["fingerprint"] = {key: value for key, value in fingerprint.items() if not key.startswith("_")}
    reasons: dict[str, str] = {"dataset_dir": "the dataset this bundle was planned on (override with --dataset_dir)"}
    spacings, shapes = np.asarray(fingerprint["_spacings"]), np.asarray(fingerprint["_shapes"])
    plans["orientation"] = "RAS"
    reasons["orientation"] = (
        f"the cases are stored {fingerprint['orientation']} (most of them); reorienting every volume to RAS fixes what "
        "each axis means, so slice_axis 2 is always the axial axis"
    )
    plans["spacing"], reasons["spacing"] = decisions.target_spacing(spacings, shapes)
    working = apply_overrides(plans, _only(overrides, "spacing"))
    resampled = shapes * spacings / np.asarray(working["spacing"])
    plans["slice_axis"], reasons["slice_axis"] = decisions.slice_axis(working["spacing"])
    axis = int(apply_overrides(plans, _only(overrides, "slice_axis"))["slice_axis"])
    depth = float(np.median(resampled[:, axis]))
    plans["context_slices"], reasons["context_slices"] = decisions.context_slices(working["spacing"], axis, depth)
    plans["normalization"], reasons["normalization"] = decisions.normalization(
        fingerprint["channels"], fingerprint["nonzero_crop_fraction"]
    )
    plans["roi_size"], reasons["roi_size"] = decisions.roi_size(resampled, axis)
    plans["views"], reasons["views"] = decisions.views(working["spacing"], resampled, axis, views)
    plans["network"] = dict(decisions.DEFAULT_NETWORK)
    reasons["network"] = (
        "a 2D UNet with 32 base features (nnU-Net's width): on the hippocampus bundle it scored 0.877 mean Dice "
        "against 0.863 for U2-Net small on the same 2.5D input"
    )
    training_cases = len(splits[0]["train"])
    working = apply_overrides(plans, overrides)
    gpu = torch.cuda.is_available()
    volumes, per_volume, reasons["volumes_per_batch"] = decisions.batch_size(working["roi_size"], training_cases, gpu)
    plans["volumes_per_batch"], plans["slices_per_volume"] = volumes, per_volume
    reasons["slices_per_volume"] = reasons["volumes_per_batch"]
    plans["learning_rate"] = LEARNING_RATE
    reasons["learning_rate"] = "AdamW at 2e-3 with cosine annealing to 1e-5 over the epochs: the hippocampus recipe"
    working = apply_overrides(plans, overrides)
    in_channels = (2 * int(working["context_slices"]) + 1) * len(channel_names)
    batch = int(working["volumes_per_batch"]) * int(working["slices_per_volume"])
    if step_seconds is None:
        measured = measure_seconds(working["network"], in_channels, len(label_names), list(working["roi_size"]), batch)
        step = measured["train_step_seconds"] * STEP_OVERHEAD
    else:
        step = float(step_seconds)
        measured = {
            "device": "not measured",
            "threads": torch.get_num_threads(),
            "train_step_seconds": step,
            "window_batch": 64,
            "window_batch_seconds": round(step / 3 * 64 / batch, 4),
            "given": "--step_seconds: a training step of this many seconds, inference estimated from it",
        }
    plane = [p for p in range(3) if p != int(working["slice_axis"])]
    extent = [float(np.median(resampled[:, p])) for p in plane]
    windows = len(splits[0]["val"]) * depth * _windows_per_slice(extent, list(working["roi_size"]))
    validation = STEP_OVERHEAD * math.ceil(windows / measured["window_batch"]) * measured["window_batch_seconds"]
    measured["validation_seconds_estimate"] = round(validation, 2)
    iterations = math.ceil(training_cases / int(working["volumes_per_batch"]))
    fixed = {key: int(overrides[key]) for key in ("max_epochs", "epoch_length", "val_interval") if key in overrides}
    budget, budget_reasons = budget_epochs(time_budget_minutes, step, validation, iterations, fixed)
    plans.update(budget)
    reasons.update(budget_reasons)
    plans["folds"] = {
        "count": len(splits),
        "method": split_method,
        "seed": split_seed if split_method == "random" else None,
    }
    reasons["folds"] = (
        f"{len(splits)} case-level folds, "
        + (
            "interleaved over the sorted case names (fold k validates on cases k, k+K, ...)"
            if split_method == "interleaved"
            else f"shuffled with seed {split_seed} (nnU-Net's way)"
        )
        + "; recorded in splits.json"
    )
    plans["time_budget_minutes"] = time_budget_minutes
    plans["measured"] = measured
    plans["reasons"] = reasons
    plans["overrides"] = {}
    plans = apply_overrides(plans, overrides)
    ordered = {key: plans.pop(key) for key in ("measured", "overrides", "reasons")}
    plans.update(ordered)
    seconds = time.perf_counter() - start
    logger.info("planned %s (%d cases) in %.1f s", dataset.root, len(dataset.training), seconds)
    return Plan(plans, splits, label_names, channel_names, dataset, seconds)


def _only(overrides: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if k.split(".")[0] == key}
