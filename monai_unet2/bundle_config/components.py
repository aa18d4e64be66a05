"""The components a bundle builds from its facts, one function each, so every config builds them the same way.

``train.json`` and ``inference.json`` must each load on their own (MONAI Label reads them alone), so what they
share cannot live in a third config file. It lives here instead: the deterministic preprocessing after the file
loader (one chain for training, validation, evaluation and inference), the network, and the per-class metrics.
Each function takes the facts as arguments, so the configs pass their fact ids (``@spacing``, ``@context_slices``)
and command-line overrides of those ids reach every pipeline.

The chains are MONAI dictionary transforms in a plain list: ``CacheDataset`` caches a flat list up to its first
random transform, ``Invertd`` undoes the spatial ones, and MONAI Label finds the ``LoadImaged`` placed before them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigComponent
from monai.handlers import MeanDice
from monai.transforms import (
    AsDiscreted,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
)

from monai_unet2.handlers import class_output_transform
from monai_unet2.transforms import CaseNamed, ChannelNormalized, CheckVolumed

from .facts import PLANS_FILE

__all__ = [
    "NORMALIZATIONS",
    "build_network",
    "image_preprocessing",
    "intensity_normalization",
    "per_class_dice",
    "volume_preprocessing",
]


def _zscore(keys: Sequence[str], channel_wise: bool = True, nonzero: bool = False) -> list[MapTransform]:
    return [NormalizeIntensityd(keys, channel_wise=channel_wise, nonzero=nonzero)]


def _per_channel_values(value: float | Sequence[float], channels: int, name: str) -> list[float]:
    values = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != channels:
        raise TypeError(f"'{name}' has {len(values)} values for {channels} channel(s)")
    return values


def _ct(
    keys: Sequence[str],
    lower: float | Sequence[float],
    upper: float | Sequence[float],
    mean: float | Sequence[float],
    std: float | Sequence[float],
) -> list[MapTransform]:
    channels = max(len(v) if isinstance(v, Sequence) else 1 for v in (lower, upper, mean, std))
    bounds = {
        name: _per_channel_values(v, channels, name)
        for name, v in zip(("lower", "upper", "mean", "std"), (lower, upper, mean, std))
    }
    schemes = [{"name": "ct", **{name: values[c] for name, values in bounds.items()}} for c in range(channels)]
    return [ChannelNormalized(keys, schemes)]


def _per_channel(keys: Sequence[str], channels: Sequence[Mapping[str, Any]]) -> list[MapTransform]:
    try:
        return [ChannelNormalized(keys, channels)]
    except ValueError as error:
        raise TypeError(str(error)) from error


#: normalisation ``name`` in ``plans.json`` -> builder of its transforms (the other keys are its arguments)
NORMALIZATIONS: dict[str, Callable[..., list[MapTransform]]] = {
    "zscore": _zscore,
    "ct": _ct,
    "per_channel": _per_channel,
}


def intensity_normalization(keys: str | Sequence[str], normalization: Mapping[str, Any]) -> list[MapTransform]:
    """The intensity normalisation that ``plans.json`` names, e.g. ``{"name": "zscore", "channel_wise": true}``.

    - ``zscore``: subtract the mean and divide by the standard deviation of each volume (per channel with
      ``channel_wise``, over the non-zero voxels only with ``nonzero``), MONAI's ``NormalizeIntensityd``.
    - ``ct``: ``lower``, ``upper``, ``mean``, ``std`` (one value, or one per channel): clip to the training set's
      foreground percentiles, then z-score with its foreground statistics, as nnU-Net does for CT
      (:class:`~monai_unet2.transforms.ChannelNormalized`).
    - ``per_channel``: ``channels``, one scheme per channel (``{"name": "ct", "lower": ..., ...}``,
      ``{"name": "zscore", "nonzero": false}``, ``{"name": "none"}``), for images that mix modalities.

    Args:
        keys: the image keys.
        normalization: ``name`` (one of :data:`NORMALIZATIONS`) and that scheme's arguments.

    Raises:
        ValueError: for a scheme not in :data:`NORMALIZATIONS` or arguments it does not take.
    """
    arguments = dict(normalization)
    name = arguments.pop("name", None)
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization {name!r} in {PLANS_FILE} is not one of {sorted(NORMALIZATIONS)}.")
    keys = [keys] if isinstance(keys, str) else list(keys)
    try:
        return NORMALIZATIONS[name](keys, **arguments)
    except TypeError as error:
        raise ValueError(f"normalization {dict(normalization)} in {PLANS_FILE}: {error}") from error


def volume_preprocessing(
    image_key: str = "image",
    label_key: str | None = None,
    labels: Mapping[str, str] | None = None,
    image_channels: int = 1,
    orientation: str | None = "RAS",
    spacing: Sequence[float] | None = None,
    normalization: Mapping[str, Any] | None = None,
    affine_tolerance: float = 1e-3,
) -> list[MapTransform]:
    """The deterministic preprocessing of 3D volumes after loading, for training, validation and inference alike.

    Channel first; refuse volumes that are empty, not 3D, have the wrong number of channels, non-finite values,
    label values other than ``labels``, or an image and label on different grids (:class:`CheckVolumed`); reorient
    to ``orientation``; resample to ``spacing`` (bilinear for images, nearest for labels); image ``float32``, label
    ``uint8``; normalise intensities; name a case read from per-channel files after the case
    (:class:`~monai_unet2.transforms.CaseNamed`, so outputs are ``<case>_seg.nii.gz``). The spatial steps are
    invertible, so ``Invertd`` maps a prediction back to the input's grid.

    Args:
        image_key: key of the image.
        label_key: key of the label map, or ``None`` when there is none (inference).
        labels: label value -> name (``metadata.json`` ``channel_def``); a label may hold these values only.
        image_channels: channels an image has.
        orientation: axis codes to reorient to, e.g. ``"RAS"``, or ``None`` to keep each volume's own.
        spacing: voxel size in mm to resample to, or ``None`` to keep each volume's own.
        normalization: intensity normalisation, see :func:`intensity_normalization`; ``None`` for none.
        affine_tolerance: largest distance in mm between where image and label put the same voxel.
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    transforms: list[MapTransform] = [
        EnsureChannelFirstd(keys),
        CheckVolumed(
            keys,
            label_key=label_key,
            expected_labels=None if label_key is None or labels is None else [int(value) for value in labels],
            expected_spatial_dims=3,
            expected_channels=[image_channels, 1][: len(keys)],
            affine_tolerance=affine_tolerance,
        ),
    ]
    if orientation is not None:
        transforms.append(Orientationd(keys, axcodes=orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spacing is not None:
        transforms.append(Spacingd(keys, pixdim=spacing, mode=["bilinear", "nearest"][: len(keys)]))
    transforms.append(EnsureTyped(keys, dtype=[torch.float32, torch.uint8][: len(keys)]))
    if normalization is not None:
        transforms += intensity_normalization(image_key, normalization)
    transforms.append(CaseNamed(image_key))
    return transforms


def image_preprocessing(
    image_key: str = "image",
    label_keys: Sequence[str] = (),
    label_threshold: float | None = None,
    normalization: Mapping[str, Any] | None = None,
    image_channels: int | None = None,
    label_values: Sequence[float] | None = None,
    min_spatial_size: int | None = None,
) -> list[MapTransform]:
    """The deterministic preprocessing of 2D images after loading, for training, validation and inference alike.

    Channel first; refuse images that are not 2D, have the wrong number of channels, non-finite values, are smaller
    than ``min_spatial_size``, or (first label key) hold values other than ``label_values``, and label keys on
    another grid than the image (:class:`CheckVolumed`); binarise label-like keys (labels, field-of-view masks) at
    ``label_threshold``; ``float32``; normalise the image's intensities.

    Args:
        image_key: key of the image.
        label_keys: keys of label maps and masks loaded with the image (none at inference); the first is the label.
        label_threshold: labels and masks are 1 above this value (e.g. 127.5 for 0/255 files); ``None`` keeps them.
        normalization: intensity normalisation, see :func:`intensity_normalization`; ``None`` for none.
        image_channels: channels an image has (label keys have one); ``None`` skips the channel check.
        label_values: the values a stored label file may hold (e.g. ``[0, 255]``); ``None`` skips the check.
        min_spatial_size: the smallest accepted width and height; ``None`` skips the check.
    """
    keys = [image_key, *label_keys]
    transforms: list[MapTransform] = [
        EnsureChannelFirstd(keys),
        CheckVolumed(
            keys,
            label_key=label_keys[0] if label_keys else None,
            expected_labels=label_values if label_keys else None,
            expected_spatial_dims=2,
            expected_channels=[image_channels] + [1] * len(label_keys),
            min_spatial_size=min_spatial_size,
        ),
    ]
    if label_keys and label_threshold is not None:
        transforms.append(AsDiscreted(list(label_keys), threshold=label_threshold))
    transforms.append(EnsureTyped(keys, dtype=torch.float32))
    if normalization is not None:
        transforms += intensity_normalization(image_key, normalization)
    return transforms


def per_class_dice(labels: Mapping[str, str], prefix: str = "val_dice_") -> dict[str, MeanDice]:
    """One ``MeanDice`` handler per foreground label, named ``<prefix><label name>``, for an evaluator's metrics.

    MLflow and ``StatsHandler`` log one number per metric, so each class gets its own handler that keeps only its
    channel of the one-hot prediction and label (:func:`monai_unet2.handlers.class_output_transform`).

    Args:
        labels: label value -> name (``metadata.json`` ``channel_def``); value 0 (background) gets no metric.
        prefix: prefix of the metric names.
    """
    return {
        f"{prefix}{name}": MeanDice(include_background=True, output_transform=class_output_transform(int(value)))
        for value, name in labels.items()
        if int(value) != 0
    }


def build_network(spec: Mapping[str, Any], in_channels: int, out_channels: int) -> torch.nn.Module:
    """Instantiate the network that ``plans.json`` describes, with the channel counts the configs derive.

    ``spec`` is a MONAI config component without its channel counts, instantiated as MONAI's bundle parser would,
    e.g. ``{"_target_": "monai_unet2.networks.UNet", "spatial_dims": 2, "features": 32}``: the counts follow from
    the labels, the input channels and the context slices, so stating them in the plans would state them twice.

    Args:
        spec: ``_target_`` (a dotted class path) and the other constructor arguments.
        in_channels: input channels of the network (``(2 * context_slices + 1) * image channels`` for 2.5D).
        out_channels: output channels (``num_classes`` for softmax, one per foreground label for sigmoid).

    Raises:
        ValueError: when ``spec`` has no ``_target_`` or states a channel count itself.
    """
    if "_target_" not in spec:
        raise ValueError(f"the network in {PLANS_FILE} needs a '_target_' (a dotted class path), got {dict(spec)}.")
    stated = sorted({"in_channels", "out_channels"} & set(spec))
    if stated:
        raise ValueError(f"the network in {PLANS_FILE} states {stated}; they are derived, remove them.")
    return ConfigComponent(dict(spec, in_channels=in_channels, out_channels=out_channels)).instantiate()
